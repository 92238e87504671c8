"""Gold-answer preservation, rerank accuracy and cost of every method vs baselines, on the test articles.

    python bench/quality.py [--quick] [--questions 300] [--methods cascade,exit,...]

Split: the test quarter of SQuAD dev's articles (models/training/squad.py),
never read by any training or tuning script (the relevance model's settings
were tuned on its dev articles, see models/relevance/MODEL_CARD.md).
Each request: one question, its gold paragraph and four other paragraphs of
the same article, shuffled (seeded). Targets 3x, 5x, 10x = rate 1/x of the
downstream-LLM tokens. One JSON line per (target, method) and per baseline:
  compression   achieved tokens_before / tokens_after over all requests
  preservation  share of requests whose context still holds a gold answer string,
                with a bootstrap 95% interval (1,000 resamples)
  ms            mean milliseconds per request, sequential, warm, on this machine
Baselines, same requests, same budgets: first_k (the first tokens of the joined
documents), random (random whole sentences) and minilm_topk (the 20 lines a
user writes by hand: split on sentence punctuation, rank by MiniLM cosine to the
query, add sentences while they fit). A method "beats" a baseline only where
the intervals separate. A rerank line compares the document head's top-1
gold-paragraph accuracy with bi-encoder cosine, on the same requests.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import random
import re
import time

import numpy as np

from ctxcomp import relevance
from ctxcomp.embedding import embed
from ctxcomp.hub import ModelHub
from ctxcomp.models.training import squad
from ctxcomp.pipeline import Compressor
from ctxcomp.selection import keep_sentences
from ctxcomp.text import split_sentences
from ctxcomp.types import CompressRequest, Document

TARGETS = {"3x": 1 / 3, "5x": 0.2, "10x": 0.1}
METHODS = (
    "cascade", "exit", "recomp_extractive", "mig", "llmlingua2", "llmlingua2:query_agnostic",
    "exit>llmlingua2", "mig>llmlingua2",
)
VARIANTS = {"llmlingua2:query_agnostic": ("llmlingua2", {"query_aware": False})}
OTHER_PARAGRAPHS = 4
SEED = 7
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def build_requests(n: int) -> list[tuple[squad.Question, CompressRequest, int]]:
    """(question, request, index of the gold document)."""
    test = squad.split_articles(squad.load_paragraphs())[1]
    by_article = collections.defaultdict(list)
    for p in test:
        by_article[p.article].append(p)
    rng = random.Random(SEED)
    pairs = [(p, q) for p in test for q in p.questions]
    rng.shuffle(pairs)
    out = []
    for p, q in pairs[:n]:
        docs = [p, *rng.sample([o for o in by_article[p.article] if o.index != p.index], OTHER_PARAGRAPHS)]
        rng.shuffle(docs)
        out.append((q, CompressRequest(q.text, tuple(Document(f"{d.article}#{d.index}", d.context) for d in docs)), docs.index(p)))
    return out


def first_k(hub: ModelHub, request: CompressRequest, rate: float) -> str:
    tokenizer = hub.get("downstream_llm", "tokenizer")
    ids = tokenizer("\n\n".join(d.text for d in request.documents), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: int(len(ids) * rate)])


def random_sentences(hub: ModelHub, request: CompressRequest, rate: float, rng: np.random.Generator) -> str:
    split = split_sentences(hub.get("spacy"), [d.text for d in request.documents])
    before = hub.count_tokens([d.text for d in request.documents])
    kept = keep_sentences(hub, request, split, [rng.random(len(s)) for s in split], int(sum(before) * rate), before)
    return "\n\n".join(d.text for d in kept if d.text)


def minilm_topk(hub: ModelHub, request: CompressRequest, rate: float) -> str:
    """What a user writes by hand: regex sentences, MiniLM cosine, greedy fill, original order."""
    sentences = [s for d in request.documents for s in _SENTENCE.split(d.text) if s.strip()]
    vectors = embed(hub, [request.query, *sentences])
    costs = hub.count_tokens(sentences)
    budget = int(sum(hub.count_tokens([d.text for d in request.documents])) * rate)
    chosen: list[int] = []
    for i in np.argsort(-(vectors[1:] @ vectors[0])):
        if costs[i] <= budget:
            chosen.append(int(i))
            budget -= costs[i]
    return " ".join(sentences[i] for i in sorted(chosen))


def interval(hits: list[bool], rng: np.random.Generator) -> tuple[float, float]:
    """Bootstrap 95% interval of a share."""
    arr = np.asarray(hits, float)
    means = arr[rng.integers(0, len(arr), (1000, len(arr)))].mean(1)
    return round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)


def row(name: str, target: str, questions, contexts, tokens: list[tuple[int, int]], seconds: list[float]) -> dict:
    hits = [any(a in c for a in q.answers) for q, c in zip(questions, contexts)]
    return {
        "bench": "quality", "target": target, "method": name, "requests": len(hits),
        "compression": round(sum(b for b, _ in tokens) / max(sum(a for _, a in tokens), 1), 2),
        "preservation": round(float(np.mean(hits)), 4), "interval95": interval(hits, np.random.default_rng(SEED)),
        "ms": round(1000 * float(np.mean(seconds)), 1) if seconds else None,
    }


def run_method(compressor: Compressor, name: str, requests, rate: float) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    method, options = VARIANTS.get(name, (name, {}))
    contexts, tokens, seconds = [], [], []
    for request in requests:
        started = time.perf_counter()
        result = compressor.compress(dataclasses.replace(request, method=method, rate=rate, options=options))
        seconds.append(time.perf_counter() - started)
        contexts.append(result.context)
        tokens.append((result.tokens_before, result.tokens_after))
    return contexts, tokens, seconds


def baselines(hub: ModelHub, target: str, rate: float, questions, requests, before) -> list[dict]:
    rng = np.random.default_rng(SEED)
    rows = []
    for name, make in (
        ("first_k", lambda r: first_k(hub, r, rate)),
        ("random", lambda r: random_sentences(hub, r, rate, rng)),
        ("minilm_topk", lambda r: minilm_topk(hub, r, rate)),
    ):
        seconds, contexts = [], []
        for r in requests:
            started = time.perf_counter()
            contexts.append(make(r))
            seconds.append(time.perf_counter() - started)
        tokens = [(b, c) for b, c in zip(before, hub.count_tokens(contexts))]
        rows.append(row(name, target, questions, contexts, tokens, seconds))
    return rows


def rerank(hub: ModelHub, cases) -> dict:
    scored = relevance.score(hub, [r for _, r, _ in cases])
    head = [int(np.argmax([d.relevance for d in s])) == g for s, (_, _, g) in zip(scored, cases)]
    cosine = []
    for _, request, gold in cases:
        vectors = embed(hub, [request.query, *[d.text for d in request.documents]])
        cosine.append(int(np.argmax(vectors[1:] @ vectors[0])) == gold)
    rng = np.random.default_rng(SEED)
    return {
        "bench": "rerank", "requests": len(cases),
        "document_head_top1": round(float(np.mean(head)), 4), "document_head_interval95": interval(head, rng),
        "bi_encoder_cosine_top1": round(float(np.mean(cosine)), 4), "bi_encoder_interval95": interval(cosine, rng),
    }


def machine() -> dict:
    """The CPU the timings come from, with the flags that decide its matrix speed."""
    info = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": [f for f in wanted if f in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 requests, 5x, three methods (under a minute after load)")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    targets = {"5x": TARGETS["5x"]} if args.quick else TARGETS
    methods = ["cascade", "llmlingua2", "recomp_extractive"] if args.quick else args.methods.split(",")
    hub = ModelHub()
    compressor = Compressor(hub)
    cases = build_requests(15 if args.quick else args.questions)
    questions, requests = [q for q, _, _ in cases], [r for _, r, _ in cases]
    compressor.compress(dataclasses.replace(requests[0], method="cascade"))  # warm: models load outside the timings
    print(json.dumps({"bench": "quality", "split": "test articles", **machine()}))
    print(json.dumps(rerank(hub, cases)), flush=True)
    before = [sum(hub.count_tokens([d.text for d in r.documents])) for r in requests]
    started = time.time()
    for target, rate in targets.items():
        rows = baselines(hub, target, rate, questions, requests, before)
        for name in methods:
            rows.append(row(name, target, questions, *run_method(compressor, name, requests, rate)))
        for r in rows:
            r["beats"] = [b["method"] for b in rows if r["interval95"][0] > b["interval95"][1]]
            print(json.dumps(r), flush=True)
    print(json.dumps({"bench": "quality", "elapsed_s": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
