"""Gold-answer preservation, rerank accuracy, the selective gate and cost of every method vs baselines.

    python bench/quality.py [--quick] [--questions 300] [--methods cascade,exit,...] [--split test] [--targets 3x,5x]
                            [--distractors retrieved --documents 5,10,20] [--text informal] [--record NAME]

A method may carry options for tuning runs: `recomp_abstractive:max_input_tokens=512`.

Split: the test articles of SQuAD dev (training/squad.py), never read by
any training or tuning script (the relevance model's settings were tuned on the
dev articles, see ctxcomp/models/relevance/MODEL_CARD.md); `--split dev` is for tuning.
Each request: one question, its gold paragraph and four other paragraphs of
the same article, shuffled (seeded). `--distractors retrieved` is what a retriever
returns instead: half of the other documents (rounded up) are near misses, the
paragraphs of other articles of the split that BM25 ranks highest for the question
and that hold none of its answers (training/distractors.py), the rest paragraphs
of the gold one's article; `--documents 5,10,20` runs each request size. Targets
3x, 5x, 10x, 20x = rate 1/x of the downstream-LLM tokens. One JSON line per
(documents, target, method) and per baseline:
  compression   achieved tokens_before / tokens_after over all requests
  preservation  share of requests whose context still holds a gold answer string,
                with a bootstrap 95% interval (1,000 resamples)
  ms            mean milliseconds per request, sequential, warm, on this machine
Baselines, same requests, same budgets: first_k (the first tokens of the joined
documents), random (random whole sentences) and minilm_topk (the 20 lines a
user writes by hand: split on sentence punctuation, rank by MiniLM cosine to the
query, add sentences while they fit). A method "beats" a baseline only where
the intervals separate; `paired` gives each row's difference from minilm_topk and
recomp_extractive on the same requests, with the interval of that difference. A rerank line
compares the document head's top-1 gold-paragraph accuracy and mean reciprocal rank with the
bi-encoder's cosine, on the same requests. A gate
line measures selective augmentation at the shipped threshold: the share of
these requests it lets through, and the share of off-topic requests (the same
questions over paragraphs of other articles of the split) it empties.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp import relevance
from ctxcomp.embedding import embed
from ctxcomp.evaluate import bootstrap_interval, separated
from ctxcomp.hub import ModelHub
from ctxcomp.pipeline import Compressor
from ctxcomp.selection import keep_sentences
from ctxcomp.text import split_sentences
from ctxcomp.types import CompressRequest, Document
from training import distractors, squad

TARGETS = {"3x": 1 / 3, "5x": 0.2, "10x": 0.1, "20x": 0.05}
METHODS = (
    "cascade", "exit", "recomp_extractive", "mig", "llmlingua2", "llmlingua2:query_agnostic",
    "exit>llmlingua2", "mig>llmlingua2",
)
PAIRED_AGAINST = ("minilm_topk", "recomp_extractive")  # the baselines #14's acceptance names
VARIANTS = {"llmlingua2:query_agnostic": ("llmlingua2", {"query_aware": False})}
OTHER_PARAGRAPHS = 4
SEED = 7
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def build_requests(
    paragraphs: list[squad.Paragraph], n: int, documents: int = OTHER_PARAGRAPHS + 1, retrieved: bool = False,
) -> list[tuple[squad.Question, CompressRequest, int]]:
    """(question, request, index of the gold document): the gold paragraph among `documents` - 1
    others of its article, or, `retrieved`, among near misses (half of the others, rounded up:
    paragraphs of other articles BM25 ranks highest for the question, none holding an answer)
    and same-article paragraphs for the rest."""
    by_article = collections.defaultdict(list)
    for p in paragraphs:
        by_article[p.article].append(p)
    corpus = distractors.index(paragraphs) if retrieved else None
    rng = random.Random(SEED)
    pairs = [(p, q) for p in paragraphs for q in p.questions]
    rng.shuffle(pairs)
    out = []
    for p, q in pairs[:n]:
        others = documents - 1
        near = [] if corpus is None else [paragraphs[i] for i in distractors.near_misses(corpus, q, p.article, -(-others // 2))]
        same = [o for o in by_article[p.article] if o.index != p.index]
        docs = [p, *near, *rng.sample(same, min(others - len(near), len(same)))]
        rng.shuffle(docs)
        out.append((q, CompressRequest(q.text, tuple(Document(f"{d.article}#{d.index}", d.context) for d in docs)), docs.index(p)))
    return out


_RUN_ON = re.compile(r"([.!?])(\s+)")
_NOT_INFORMAL = re.compile(r"[,;:\"“”‘’]")


def informal(text: str, rng: random.Random) -> str:
    """Text as forum posts are written: lowercase, no commas, semicolons, colons or quotes, and
    two of three sentence ends run on (the full stop dropped)."""
    text = _RUN_ON.sub(lambda m: (m.group(2) if rng.random() < 2 / 3 else m.group(0)), text)
    return re.sub(r"\s+", " ", _NOT_INFORMAL.sub("", text.lower())).strip()


def informal_cases(cases):
    """build_requests' cases rewritten by `informal` (answers too, so a kept answer still matches)."""
    rng = random.Random(SEED)
    out = []
    for question, request, gold in cases:
        documents = tuple(dataclasses.replace(d, text=informal(d.text, rng)) for d in request.documents)
        answers = tuple(informal(a, rng) for a in question.answers)
        out.append((dataclasses.replace(question, text=informal(question.text, rng), answers=answers),
                    dataclasses.replace(request, query=informal(request.query, rng), documents=documents), gold))
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


def row(name: str, target: str, questions, contexts, tokens: list[tuple[int, int]], seconds: list[float]) -> dict:
    hits = [any(a in c for a in q.answers) for q, c in zip(questions, contexts)]
    return {
        "bench": "quality", "target": target, "method": name, "requests": len(hits), "hits": hits,
        "compression": round(sum(b for b, _ in tokens) / max(sum(a for _, a in tokens), 1), 2),
        "preservation": round(float(np.mean(hits)), 4), "interval95": bootstrap_interval(hits, seed=SEED),
        "ms": round(1000 * float(np.mean(seconds)), 1) if seconds else None,
    }


def paired_differences(row: dict, rows: list[dict]) -> dict:
    """Preservation of `row` minus each of PAIRED_AGAINST on the same requests, with a bootstrap
    95% interval of the per-request difference (tighter than comparing two intervals: both
    face the same requests)."""
    out = {}
    for other in rows:
        if other["method"] in PAIRED_AGAINST and other["method"] != row["method"]:
            difference = np.asarray(row["hits"], float) - np.asarray(other["hits"], float)
            out[other["method"]] = [round(float(difference.mean()), 4), bootstrap_interval(difference, seed=SEED)]
    return out


def method_and_options(name: str) -> tuple[str, dict]:
    """"method:key=value:key=value" -> (method, options); values as JSON where they parse."""
    method, *pairs = name.split(":")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return method, options


def run_method(compressor: Compressor, name: str, requests, rate: float) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    method, options = VARIANTS.get(name) or method_and_options(name)
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


def gold_rank(scores: np.ndarray, gold: int) -> int:
    """1-based rank of the gold document under `scores` (ties count against it)."""
    return 1 + int(np.count_nonzero(scores >= scores[gold])) - 1


def rerank(hub: ModelHub, cases, scored) -> dict:
    """The document head's and the bi-encoder's top-1 and mean reciprocal rank of the gold paragraph."""
    head = [gold_rank(np.asarray([d.relevance for d in s]), g) for s, (_, _, g) in zip(scored, cases)]
    cosine = []
    for _, request, gold in cases:
        vectors = embed(hub, [request.query, *[d.text for d in request.documents]])
        cosine.append(gold_rank(vectors[1:] @ vectors[0], gold))
    out: dict = {"bench": "rerank", "requests": len(cases)}
    for name, ranks in (("document_head", head), ("bi_encoder_cosine", cosine)):
        top1 = [r == 1 for r in ranks]
        reciprocal = [1.0 / r for r in ranks]
        out |= {f"{name}_top1": round(float(np.mean(top1)), 4), f"{name}_top1_interval95": bootstrap_interval(top1),
                f"{name}_mrr": round(float(np.mean(reciprocal)), 4), f"{name}_mrr_interval95": bootstrap_interval(reciprocal)}
    return out


def gate(hub: ModelHub, paragraphs: list[squad.Paragraph], cases, scored) -> dict:
    """Selective augmentation at the shipped threshold: on-topic requests let through,
    off-topic ones (each question over OTHER_PARAGRAPHS paragraphs of other articles) emptied."""
    threshold = float(hub.get("relevance").meta["document_threshold"])
    rng = random.Random(SEED)
    off = [CompressRequest(q.text, tuple(Document(f"{p.article}#{p.index}", p.context) for p in rng.sample(
        [o for o in paragraphs if o.article != r.documents[g].id.rsplit("#", 1)[0]], OTHER_PARAGRAPHS)))
        for q, r, g in cases]
    passed = [max(d.probability for d in s) > threshold for s in scored]
    rejected = [max(d.probability for d in s) <= threshold for s in relevance.score(hub, off)]
    return {
        "bench": "gate", "threshold": threshold, "requests": len(cases),
        "on_topic_passed": round(float(np.mean(passed)), 4), "on_topic_interval95": bootstrap_interval(passed),
        "off_topic_rejected": round(float(np.mean(rejected)), 4), "off_topic_interval95": bootstrap_interval(rejected),
    }


def report(path: Path) -> str:
    """A result record of this bench as markdown tables (what docs/performance.md shows)."""
    record = json.loads(path.read_text())
    lines = record["lines"]
    head = lines[0]
    text = ("; every request rewritten as informal text (lowercase, little punctuation, run-on sentences)"
            if head.get("text") == "informal" else "")
    out = [f"{run_line(record)}; {head['split']}{text}.", ""]

    def interval(pair: list) -> str:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"

    def paired(line: dict, other: str) -> str:
        pair = line.get("paired", {}).get(other)
        return f"{pair[0]:+.3f} [{pair[1][0]:+.3f}, {pair[1][1]:+.3f}]" if pair else ""

    settings = sorted({(line["documents"], line["distractors"]) for line in lines if "documents" in line})
    for documents, distractors in settings:
        mine = [line for line in lines if (line.get("documents"), line.get("distractors")) == (documents, distractors)]
        out += [f"**{documents} documents, {distractors.replace('-', ' ')} distractors** "
                f"({mine[0]['requests']} requests):", ""]
        for line in mine:
            if line["bench"] == "rerank":
                who = (f"the relevance model at `{line['relevance_folder']}`, trained on {line['relevance']}"
                       if "relevance_folder" in line else "the shipped relevance model")
                out.append(f"- rerank ({who}): document head top-1 {line['document_head_top1']:.3f} "
                           f"{interval(line['document_head_top1_interval95'])}, MRR {line['document_head_mrr']:.3f}; "
                           f"bi-encoder cosine top-1 {line['bi_encoder_cosine_top1']:.3f} "
                           f"{interval(line['bi_encoder_cosine_top1_interval95'])}, MRR {line['bi_encoder_cosine_mrr']:.3f}")
            elif line["bench"] == "gate":
                out.append(f"- selective gate at {line['threshold']}: on-topic let through {line['on_topic_passed']:.3f} "
                           f"{interval(line['on_topic_interval95'])}, off-topic emptied {line['off_topic_rejected']:.3f}")
        out += ["", "| target | method | kept [95%] | achieved | minus minilm_topk [paired 95%] | "
                "minus recomp_extractive | ms |", "|" + "---|" * 7]
        for line in mine:
            if line["bench"] == "quality" and "target" in line:
                out.append(f"| {line['target']} | {line['method']} | {line['preservation']:.3f} {interval(line['interval95'])} | "
                           f"{line['compression']}x | {paired(line, 'minilm_topk')} | {paired(line, 'recomp_extractive')} | "
                           f"{line['ms']} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 requests, 5x, three methods (under a minute after load)")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="3x,5x,10x", help="of " + ", ".join(TARGETS))
    parser.add_argument("--distractors", choices=("same-article", "retrieved"), default="same-article",
                        help="the gold paragraph's company: paragraphs of its article, or also near misses "
                             "BM25 retrieves from other articles")
    parser.add_argument("--documents", default="5", help="documents per request, one setting per value (5,10,20)")
    parser.add_argument("--text", choices=("as-written", "informal"), default="as-written",
                        help="the requests as SQuAD has them, or rewritten as forum text (lowercase, little punctuation)")
    parser.add_argument("--rerank-also", default=None, metavar="FOLDER",
                        help="another relevance model's folder (an earlier delta): its rerank line on the same requests")
    parser.add_argument("--record", default=None, help="write the run as this result record (bench/results/NAME.json)")
    parser.add_argument("--report", type=Path, help="print this result record as markdown tables, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    targets = {"5x": TARGETS["5x"]} if args.quick else {t: TARGETS[t] for t in args.targets.split(",")}
    methods = ["cascade", "llmlingua2", "recomp_extractive"] if args.quick else args.methods.split(",")
    hub = ModelHub()
    compressor = Compressor(hub)
    paragraphs = split_paragraphs(args.split)
    record = Record("quality")
    record.emit(header("quality", args.split, distractors=args.distractors, text=args.text,
                       relevance=hub.get("relevance").meta.get("groups", "")))
    started = time.time()
    for documents in [int(d) for d in args.documents.split(",")]:
        cases = build_requests(paragraphs, 15 if args.quick else args.questions, documents, args.distractors == "retrieved")
        if args.text == "informal":
            cases = informal_cases(cases)
        compressor.compress(dataclasses.replace(cases[0][1], method="cascade"))  # warm: models load outside the timings
        setting = {"documents": documents, "distractors": args.distractors}
        if args.rerank_also:
            other = ModelHub({"relevance": args.rerank_also})
            scored = relevance.score(other, [r for _, r, _ in cases])
            record.emit({**rerank(hub, cases, scored), **setting, "relevance": other.get("relevance").meta.get("groups", ""),
                         "relevance_folder": args.rerank_also})
        setting_rows(record, hub, compressor, paragraphs, cases, targets, methods, setting)
    record.emit({"bench": "quality", "elapsed_s": round(time.time() - started, 1)})
    if args.record and not args.quick:
        print(f"result record: {record.write(args.record)}")


def setting_rows(record: Record, hub: ModelHub, compressor: Compressor, paragraphs, cases, targets: dict,
                 methods: list[str], setting: dict) -> None:
    """The rerank and gate lines, then every baseline and method at every target, for one request set."""
    questions, requests = [q for q, _, _ in cases], [r for _, r, _ in cases]
    scored = relevance.score(hub, requests)
    record.emit({**rerank(hub, cases, scored), **setting})
    record.emit({**gate(hub, paragraphs, cases, scored), **setting})
    before = [sum(hub.count_tokens([d.text for d in r.documents])) for r in requests]
    for target, rate in targets.items():
        rows = baselines(hub, target, rate, questions, requests, before)
        for name in methods:
            rows.append(row(name, target, questions, *run_method(compressor, name, requests, rate)))
        for r in rows:
            r["beats"] = [b["method"] for b in rows if separated(r["interval95"], b["interval95"]) > 0]
            r["paired"] = paired_differences(r, rows)
        for r in rows:
            r.pop("hits")
            record.emit({**r, **setting})


if __name__ == "__main__":
    main()
