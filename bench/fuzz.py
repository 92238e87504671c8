"""Fuzzing at bench scale: the proto fields, and batch-mates that must not touch each other.

    python bench/fuzz.py [--quick] [--cases 2000] [--batched 400]
    python bench/fuzz.py --report bench/results/fuzz.json

proto   runs tests/service/test_reliability.py::test_fuzzed_requests_never_fail_internally
        (every CompressRequest field, Compress and CompressStream, a server with a file
        KV store) with --cases hypothesis examples (CI runs 150), and reports the cases
        hypothesis says it ran (passing, failing, invalid; every phase) and its outcome
        counts (OK, OK with KV, each status code). A failure means a request produced
        INTERNAL, hung past 60 s, or had a rejection not naming its field.
batches sends random valid requests (methods, chains with per-stage options, rates,
        budgets, KV into a file store, a few invalid ones) in concurrent waves to a
        server that waits for company, so they share micro-batches; each outcome must
        equal that request's outcome alone (same context, tokens, KV key, or the
        same error). Mismatches are cross-request contamination.
One JSON object per part; a full run writes them as a result record, bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Record, header, run_line

RECORD = Record("fuzz")

CHAIN_OPTIONS = {
    "exit": [{}, {"threshold": 0.05, "min_sentences": 3}, {"threshold": 0.9}],
    "llmlingua2": [{}, {"rate": 0.9}, {"rate": 0.2}, {"force_tokens": ["the"]}],
    "recomp_extractive": [{}, {"rate": 0.5}, {"top_k": 1}],
    "cascade": [{}, {"drop_below": 0.2}],
    "mig": [{}],
}
METHODS = ["", "llmlingua2", "exit", "recomp_extractive", "cascade", "mig", "exit>llmlingua2",
           "recomp_extractive>llmlingua2", "cascade>llmlingua2"]


def proto_part(cases: int) -> bool:
    repo = Path(__file__).resolve().parents[1]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "tests/service/test_reliability.py::test_fuzzed_requests_never_fail_internally",
         "-p", "no:randomly", "-p", "no:cacheprovider", "--hypothesis-seed=0", "--hypothesis-show-statistics"],
        cwd=repo, env={**os.environ, "CTXCOMP_FUZZ_EXAMPLES": str(cases)}, capture_output=True, text=True,
    )
    RECORD.emit({"part": "proto", "cases_requested": cases, **hypothesis_statistics(done.stdout),
                 "passed": done.returncode == 0, "seconds": round(time.perf_counter() - started, 1),
                 "tail": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]})
    return done.returncode == 0


def hypothesis_statistics(output: str) -> dict:
    """Cases hypothesis ran (summed over its phases) and the share of each event, from
    --hypothesis-show-statistics."""
    runs = re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases", output)
    events = {name: float(share) for share, name in re.findall(r"\* ([\d.]+)%, ([A-Z_]+(?: with KV)?)\s*$", output, re.M)}
    return {"cases_run": sum(int(p) + int(f) for p, f, _ in runs), "cases_invalid": sum(int(i) for _, _, i in runs),
            "outcome_percent": events}


def random_request(rng: random.Random, paragraphs: list) -> dict:
    from ctxcomp.types import Document

    docs = tuple(Document(str(i), p.context) for i, p in enumerate(rng.sample(paragraphs, rng.choice([1, 2, 4]))))
    method = rng.choice(METHODS)
    options = {}
    if ">" in method:
        options = {stage: rng.choice(CHAIN_OPTIONS[stage]) for stage in method.split(">")}
    elif method in CHAIN_OPTIONS:
        options = rng.choice(CHAIN_OPTIONS[method])
    request = {"query": rng.choice(paragraphs).questions[0].text, "documents": docs, "method": method, "options": options}
    target = rng.choice(["rate", "rate", "tokens", "none"])
    if target == "rate":
        request["rate"] = rng.choice([0.2, 0.33, 0.5, 0.8])
    elif target == "tokens":
        request["target_tokens"] = rng.choice([20, 60, 150])
    if rng.random() < 0.2:
        request.update(return_kv=True, kv_codec=rng.choice(["fp16", "int8", "int4"]))
    if rng.random() < 0.05:  # invalid: its error must stay its own
        request.pop("target_tokens", None)
        request["rate"] = 1.5
    return request


def outcome_of(result_or_error) -> tuple:
    import grpc

    from ctxcomp.errors import CtxcompError

    if isinstance(result_or_error, grpc.RpcError):
        return ("error", result_or_error.details())
    if isinstance(result_or_error, CtxcompError):
        return ("error", str(result_or_error))
    return ("ok", result_or_error.context, result_or_error.tokens_after, tuple(result_or_error.kv_keys))


def batches_part(count: int, wave: int, seed: int) -> bool:
    from ctxcomp.client import AsyncCtxcompClient
    from ctxcomp.kv.stage import BlobTarget
    from ctxcomp.kv.store import open_store
    from training import squad
    from ctxcomp.pipeline import Compressor
    from ctxcomp.service.microbatcher import BatcherConfig
    from ctxcomp.service.server import BackgroundServer, ServerConfig
    from ctxcomp.types import CompressRequest

    rng = random.Random(seed)
    paragraphs = squad.splits().test
    requests = [random_request(rng, paragraphs) for _ in range(count)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        compressor = Compressor(kv_store=BlobTarget(open_store(f"file://{folder}/kv")))
        alone = []
        for r in requests:
            try:
                alone.append(outcome_of(compressor.compress(CompressRequest(**r))))
            except Exception as error:  # noqa: BLE001 - an invalid request's error is its outcome
                alone.append(outcome_of(error))
        config = ServerConfig(port=0, batching=BatcherConfig(max_wait_ms=200, max_batch=wave))
        with BackgroundServer(compressor, config) as server:

            async def send_waves() -> list:
                client = AsyncCtxcompClient(server.address, timeout=300)
                try:
                    out: list = []
                    for start in range(0, count, wave):
                        calls = [client.compress(r["query"], r["documents"], **{k: v for k, v in r.items() if k not in ("query", "documents")})
                                 for r in requests[start : start + wave]]
                        out += await asyncio.gather(*calls, return_exceptions=True)
                    return out
                finally:
                    await client.close()

            together = [outcome_of(o) for o in asyncio.run(send_waves())]
            sizes = list(server.server.batcher.batch_sizes)
    mismatched = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    RECORD.emit({"part": "batches", "requests": count, "wave": wave, "batches": len(sizes),
                 "mean_batch": round(sum(sizes) / max(len(sizes), 1), 2), "max_batch": max(sizes, default=0),
                 "errors": sum(1 for o in alone if o[0] == "error"), "kv_requests": sum(1 for r in requests if r.get("return_kv")),
                 "contaminated": len(mismatched), "first_mismatch": str(requests[mismatched[0]]["method"]) if mismatched else None,
                 "seconds": round(time.perf_counter() - started, 1)})
    return not mismatched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 proto cases, 48 batched requests (under a minute)")
    parser.add_argument("--cases", type=int, default=2_000)
    parser.add_argument("--batched", type=int, default=400)
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    cases, batched = (300, 48) if args.quick else (args.cases, args.batched)
    RECORD.emit(header("fuzz", "test", requests_from="the test articles' paragraphs (batches part)"))
    ok = proto_part(cases)
    ok = batches_part(batched, wave=16, seed=11) and ok
    if not args.quick:
        print(f"result record: {RECORD.write()}")
    sys.exit(0 if ok else 1)


def report(path: Path) -> str:
    """A result record of this bench as the docs show it."""
    record = json.loads(path.read_text())
    parts = {line["part"]: line for line in record["lines"] if "part" in line}
    out = [f"{run_line(record)}.", ""]
    if "proto" in parts:
        p = parts["proto"]
        shares = ", ".join(f"{share:.1f}% {name}" for name, share in sorted(p["outcome_percent"].items(), key=lambda kv: -kv[1]))
        verdict = ("**passed**: no INTERNAL, no hang, every refusal naming its field" if p["passed"] else
                   "**failed**: a request got INTERNAL, hung, or was refused without naming its field")
        out.append(f"- proto fields: {p['cases_run']:,} hypothesis cases run ({p['cases_invalid']:,} more drawn and "
                   f"discarded) in {p['seconds']:.0f} s, {verdict}. Outcomes: {shares}.")
    if "batches" in parts:
        b = parts["batches"]
        out.append(f"- batch-mates: {b['requests']} random requests ({b['kv_requests']} with KV, {b['errors']} invalid) in "
                   f"concurrent waves of {b['wave']}: {b['batches']} micro-batches of {b['mean_batch']} on average (at most "
                   f"{b['max_batch']}), each outcome compared with the same request alone: **{b['contaminated']} "
                   f"contaminated** ({b['seconds']:.0f} s).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
