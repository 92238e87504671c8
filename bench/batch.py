"""Batch corpus job throughput: local runner vs Ray Data (local instance, 2 actors), same corpus.

    python bench/batch.py [--quick] [--records 2000]
    python bench/batch.py --report bench/results/batch.json

Records are SQuAD dev sentences (id, text, a query on every third). Both
engines run the same CompressBatch (llmlingua2, rate 0.5) into fresh output
folders; the seconds include model loading, as a user's run would, and records/s
counts from the moment the models are loaded. Prints
one JSON line with records/s of each and the Ray/local ratio. On 2 cores the
two Ray actors share the CPUs that one local process uses alone, so Ray pays
its start-up and serialisation without more hardware to spread over. A full run writes
its lines as a result record, bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import Record, header, run_line

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
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    n = 200 if args.quick else args.records
    record = Record("batch")
    record.emit(header("batch", None, corpus="sentences of SQuAD dev paragraphs, every split; only speed is reported"))
    config = JobConfig(method="llmlingua2", rate=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, n)
        local = run(corpus, Path(tmp) / "local", config, engine="local", batch_size=64, progress=False)
        distributed = run(corpus, Path(tmp) / "ray", config, engine="ray", batch_size=64, workers=args.workers, progress=False)
    record.emit({
        "bench": "batch", "records": n, "method": config.method,
        "local_records_per_s": local["records_per_s"], "local_seconds": local["seconds"],
        "ray_records_per_s": distributed["records_per_s"], "ray_seconds": distributed["seconds"],
        "ray_workers": args.workers,
        "ray_vs_local": round(distributed["records_per_s"] / max(local["records_per_s"], 1e-9), 2),
    })
    if not args.quick:
        print(f"result record: {record.write()}")


def report(path: Path) -> str:
    """A result record of this bench as the docs show it."""
    record = json.loads(path.read_text())
    line = next(line for line in record["lines"] if "ray_vs_local" in line)
    return "\n".join([
        f"{run_line(record)}; {line['records']:,} records, `{line['method']}`.", "",
        "| engine | records/s, once the models are loaded | seconds, loading included |", "|---|---|---|",
        f"| local (baseline) | {line['local_records_per_s']} | {line['local_seconds']} |",
        f"| Ray Data, local instance, {line['ray_workers']} actors | {line['ray_records_per_s']} ({line['ray_vs_local']}x "
        f"local) | {line['ray_seconds']} |",
    ]) + "\n"


if __name__ == "__main__":
    main()
