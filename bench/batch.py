"""Batch corpus job throughput: local runner vs Ray Data (local instance, 2 actors), same corpus.

    python bench/batch.py [--quick] [--records 2000]

Records are SQuAD dev sentences (id, text, a query on every third). Both
engines run the same CompressBatch (llmlingua2, rate 0.5) into fresh output
folders; the figures include model loading, as a user's run would. Prints
one JSON line with records/s of each and the Ray/local ratio. On 2 cores the
two Ray actors share the CPUs that one local process uses alone, so Ray pays
its start-up and serialisation without more hardware to spread over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import header

from ctxcomp.batch import JobConfig, run
from training import squad


def write_corpus(path: Path, n: int) -> None:
    with path.open("w") as handle:
        written = 0
        for paragraph in squad.load_paragraphs():
            for sentence in paragraph.context.split(". "):
                record = {"id": f"r{written}", "text": sentence}
                if written % 3 == 0:
                    record["query"] = paragraph.questions[0].text
                handle.write(json.dumps(record) + "\n")
                written += 1
                if written == n:
                    return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 records")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = 200 if args.quick else args.records
    print(json.dumps(header("batch", None, corpus="sentences of SQuAD dev paragraphs, every split; only speed is reported")),
          flush=True)
    config = JobConfig(method="llmlingua2", rate=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, n)
        local = run(corpus, Path(tmp) / "local", config, engine="local", batch_size=64, progress=False)
        distributed = run(corpus, Path(tmp) / "ray", config, engine="ray", batch_size=64, workers=args.workers, progress=False)
    print(json.dumps({
        "bench": "batch", "records": n, "method": config.method,
        "local_records_per_s": local["records_per_s"], "local_seconds": local["seconds"],
        "ray_records_per_s": distributed["records_per_s"], "ray_seconds": distributed["seconds"],
        "ray_workers": args.workers,
        "ray_vs_local": round(distributed["records_per_s"] / max(local["records_per_s"], 1e-9), 2),
    }), flush=True)


if __name__ == "__main__":
    main()
