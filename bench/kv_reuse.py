"""KV prefix reuse on a RAG workload: chunked keys against whole-context keys and against no store.

    python bench/kv_reuse.py [--quick] [--requests 40] [--split test] [--record NAME]

A stream of requests as a RAG service sees them: every context starts with the same system
prompt (instructions and worked examples, about 600 tokens), then three retrieved paragraphs
of one article; a follow-up request (half of them) keeps the previous request's first two
paragraphs and swaps the third, and one in eight repeats an earlier context exactly. Each
context's KV is computed on the shipped LLM (this CPU) three ways, each with its own fresh
file store, over the same requests in the same order:
  none     no store: every context is prefilled whole
  whole    whole-context keys: only an exact repeat is served from the store
  chunked  chained 256-token chunks: the longest stored prefix is reused (ctxcomp's default)
  lmcache  the same chunks written in LMCache's layout for vLLM (--kv-store lmcache+fs://):
           the stored prefix is reused the same way, but no blob is encoded or stored,
           so its time is the time until vLLM could load the chunks
Per way: TTFT of the KV (ms: lookup, prefill, encode, store; mean and median), the share of
full chunks found in the store (hit rate), and prefill tokens saved against `none`. A full
run is written as a result record (bench/results/kv-reuse-SPLIT.json unless named);
`--report RECORD` prints it as the docs show it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp.hub import ModelHub
from ctxcomp.kv import chunks
from ctxcomp.kv.lmcache import LMCacheLayout, LMCacheStore
from ctxcomp.kv.stage import BlobTarget, LMCacheTarget, compute_kv
from ctxcomp.kv.store import FileStore

SYSTEM = (
    "You are a careful assistant for a question-answering service. Answer only from the documents "
    "below; when they do not hold the answer, say so in one sentence. Quote numbers and names exactly "
    "as the documents give them. Keep answers short: one sentence unless the user asks for more. "
    "Never invent sources. If documents disagree, say which says what. "
)
EXAMPLES = (
    "Example 1. Documents: The Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
    "Question: When was the Eiffel Tower completed? Answer: In 1889. "
    "Example 2. Documents: Bananas are rich in potassium and grow in tropical regions. "
    "Question: What is the capital of France? Answer: The documents do not say. "
)


def workload(paragraphs, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    by_article: dict[str, list[str]] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p.context)
    articles = sorted(a for a, ps in by_article.items() if len(ps) >= 6)
    system = SYSTEM + EXAMPLES * 4 + "\n\nDocuments:\n"
    contexts: list[str] = []
    docs: list[str] = []
    for i in range(count):
        if contexts and rng.random() < 1 / 8:
            contexts.append(rng.choice(contexts))
            continue
        if docs and rng.random() < 0.5:
            docs = docs[:2] + [rng.choice([p for p in by_article[article] if p not in docs])]
        else:
            article = rng.choice(articles)
            docs = rng.sample(by_article[article], 3)
        contexts.append(system + "\n\n".join(docs))
    return contexts


def run_way(hub: ModelHub, contexts: list[str], way: str) -> dict:
    llm = hub.llm()
    with tempfile.TemporaryDirectory() as folder:
        target: Any = {"none": None, "lmcache": LMCacheTarget(LMCacheStore(Path(folder), LMCacheLayout("smollm2", "0")))}.get(
            way, BlobTarget(FileStore(Path(folder))))
        times, reused, prefilled, full_chunks, found_chunks = [], 0, 0, 0, 0
        for context in contexts:
            ids = llm.tokenizer(context, add_special_tokens=way == "lmcache")["input_ids"]
            started = time.perf_counter()
            kv = compute_kv(hub, context, "fp16", target, chunk_tokens=chunks.CHUNK_TOKENS if way == "chunked" else 0)
            times.append((time.perf_counter() - started) * 1000.0)
            hit = kv.store_lookup == "hit"
            whole = hit and way != "lmcache"  # an LMCache hit covers the full chunks; the tail is vLLM's to prefill
            reused += len(ids) if whole else kv.reused_tokens
            prefilled += 0 if hit else len(ids) - kv.reused_tokens
            keys = len(chunks.chunk_keys(llm.fingerprint, ids))
            full_chunks += keys
            found_chunks += keys if hit else kv.reused_tokens // chunks.CHUNK_TOKENS
    return {
        "way": way, "requests": len(contexts), "ttft_ms_mean": round(statistics.mean(times), 1),
        "ttft_ms_median": round(statistics.median(times), 1), "chunk_hit_rate": round(found_chunks / max(1, full_chunks), 3),
        "prefill_tokens": prefilled, "reused_tokens": reused,
    }


WAY_NAMES = {"none": "no store", "whole": "whole-context keys", "chunked": "chained chunks",
             "lmcache": "the same chunks in LMCache's layout (`lmcache+fs://`)"}


def report(path: Path) -> str:
    """A result record of this bench as a markdown table."""
    record = json.loads(path.read_text())
    head, rows = record["lines"][0], [line for line in record["lines"] if "way" in line]
    out = [f"{run_line(record)}; {head['requests']} requests, mean context {head['mean_context_tokens']:.0f} tokens, "
           f"{head['chunk_tokens']}-token chunks; {head['split']}.", "",
           "| way | chunk hit rate | prefill tokens | saved | KV time mean / median ms | vs none |", "|---|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| {WAY_NAMES[row['way']]} | {row['chunk_hit_rate']:.3f} | {row['prefill_tokens']:,} | "
                   f"{row['prefill_tokens_saved']:,} | {row['ttft_ms_mean']:,.0f} / {row['ttft_ms_median']:,.0f} | "
                   f"{row['ttft_speedup_vs_none']:.2f}x |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 requests (under a minute)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--record", default=None, help="result record name (default kv-reuse-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    record = Record("kv_reuse")
    hub = ModelHub()
    contexts = workload(split_paragraphs(args.split), 8 if args.quick else args.requests)
    llm = hub.llm()
    lengths = [len(llm.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in contexts]
    record.emit(header("kv_reuse", args.split, requests=len(contexts), chunk_tokens=chunks.CHUNK_TOKENS,
                       mean_context_tokens=round(statistics.mean(lengths), 1)))
    compute_kv(hub, contexts[0][:500], "fp16", None)  # warm up: first-call costs are no way's
    rows = [run_way(hub, contexts, way) for way in ("none", "whole", "chunked", "lmcache")]
    for row in rows:
        row["prefill_tokens_saved"] = rows[0]["prefill_tokens"] - row["prefill_tokens"]
        row["ttft_speedup_vs_none"] = round(rows[0]["ttft_ms_mean"] / row["ttft_ms_mean"], 2)
        record.emit(row)
    if not args.quick:
        print(f"result record: {record.write(args.record or f'kv-reuse-{args.split}')}")


if __name__ == "__main__":
    main()
