"""Answer quality of every compression method vs naive baselines, on held-apart SQuAD articles.

    python bench/quality.py [--quick] [--questions 100] [--qa-sample 30]

Each request: one SQuAD question, its gold paragraph and three other paragraphs
of the same article, shuffled (seeded). Articles are the 12 held apart from
every training script (models/squad.py). For each target (2x, 3x, 5x, 10x =
rate 1/x of the downstream-LLM tokens) and each method it prints one JSON line:
  compression   achieved tokens_before / tokens_after over all requests
  preservation  share of questions with a gold answer string still in the context
  em, f1        the shipped LLM (SmolLM2-135M-Instruct, greedy) answering from the
                compressed context, on a fixed sample of questions (SQuAD EM/F1)
with the baselines of the same run beside it: full (no compression), first_k
(the first budget tokens of the joined context) and random (random sentences
within the budget, seeded). `beats_baselines` says whether the method beats
both naive baselines on preservation and F1 at that target.
recomp_abstractive writes a summary per request with the LLM (~5-10 s each on
2 cores), so it runs on the QA sample only.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import random
import time

import numpy as np

from ctxcomp import generation, sentences
from ctxcomp.evaluate import exact_and_f1
from ctxcomp.hub import ModelHub
from ctxcomp.models import squad
from ctxcomp.pipeline import Compressor
from ctxcomp.types import CompressRequest, Document

TARGETS = {"2x": 0.5, "3x": 1 / 3, "5x": 0.2, "10x": 0.1}
METHODS = ("llmlingua2", "exit", "recomp_extractive", "mig", "exit>llmlingua2", "recomp_abstractive")
SLOW_METHODS = {"recomp_abstractive"}
OTHER_PARAGRAPHS = 3
SEED = 7
QA_SYSTEM = "Answer the question with a short phrase taken from the context."


def build_requests(n: int) -> list[tuple[squad.Question, CompressRequest]]:
    held = squad.split_articles(squad.load_paragraphs())[1]
    by_article = collections.defaultdict(list)
    for p in held:
        by_article[p.article].append(p)
    rng = random.Random(SEED)
    pairs = [(p, q) for p in held for q in p.questions]
    rng.shuffle(pairs)
    out = []
    for p, q in pairs[:n]:
        others = rng.sample([o for o in by_article[p.article] if o.index != p.index], OTHER_PARAGRAPHS)
        docs = [p, *others]
        rng.shuffle(docs)
        documents = tuple(Document(f"{d.article}#{d.index}", d.context) for d in docs)
        out.append((q, CompressRequest(query=q.text, documents=documents)))
    return out


def first_k(hub: ModelHub, request: CompressRequest, rate: float) -> str:
    """The first rate * total downstream-LLM tokens of the joined documents."""
    tokenizer = hub.llm_tokenizer()
    ids = tokenizer("\n\n".join(d.text for d in request.documents), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: int(len(ids) * rate)])


def random_sentences(hub: ModelHub, request: CompressRequest, rate: float, rng: np.random.Generator) -> str:
    """Random sentences within the same budget, in original order (a seeded random drop)."""
    split = sentences.split(hub.spacy(), [d.text for d in request.documents])
    before = hub.count_tokens([d.text for d in request.documents])
    priority = [rng.random(len(s)) for s in split]
    kept = sentences.keep_sentences(hub, request, split, priority, int(sum(before) * rate), before)
    return "\n\n".join(d.text for d in kept if d.text)


def answer(hub: ModelHub, questions: list[squad.Question], contexts: list[str]) -> list[tuple[float, float]]:
    llm = hub.llm()
    prompts = [
        generation.chat_ids(llm.tokenizer, QA_SYSTEM, f"Context:\n{c}\n\nQuestion: {q.text}\nAnswer:")
        for q, c in zip(questions, contexts)
    ]
    replies = generation.greedy(llm.model, llm.tokenizer, prompts, 16)
    return [exact_and_f1(r.split("\n")[0], q.answers) for q, r in zip(questions, replies)]


def summarize(hub, questions, requests, contexts, ratios, qa_idx) -> dict:
    preserved = [any(a in c for a in q.answers) for q, c in zip(questions, contexts)]
    before = sum(r[0] for r in ratios)
    after = sum(r[1] for r in ratios)
    qa = answer(hub, [questions[i] for i in qa_idx], [contexts[i] for i in qa_idx]) if qa_idx else []
    return {
        "requests": len(contexts),
        "compression": round(before / max(after, 1), 2),
        "preservation": round(float(np.mean(preserved)), 4),
        "qa_sample": len(qa),
        "em": round(float(np.mean([e for e, _ in qa])), 4) if qa else None,
        "f1": round(float(np.mean([f for _, f in qa])), 4) if qa else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 questions, QA on 4, 3x only (under a minute after model load)")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--qa-sample", type=int, default=30)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    targets = {"3x": TARGETS["3x"]} if args.quick else TARGETS
    n_questions, n_qa = (12, 4) if args.quick else (args.questions, args.qa_sample)
    methods = [m for m in args.methods.split(",") if m and not (args.quick and m in SLOW_METHODS)]
    hub = ModelHub()
    compressor = Compressor(hub)
    pairs = build_requests(n_questions)
    questions = [q for q, _ in pairs]
    requests = [r for _, r in pairs]
    qa_idx = list(range(min(n_qa, len(pairs))))
    before = [sum(hub.count_tokens([d.text for d in r.documents])) for r in requests]
    started = time.time()
    full = summarize(hub, questions, requests, ["\n\n".join(d.text for d in r.documents) for r in requests],
                     [(b, b) for b in before], qa_idx)
    for target, rate in targets.items():
        rng = np.random.default_rng(SEED)
        first_k_contexts = [first_k(hub, r, rate) for r in requests]
        random_contexts = [random_sentences(hub, r, rate, rng) for r in requests]
        baselines = {
            "full": full,
            "first_k": summarize(hub, questions, requests, first_k_contexts,
                                 [(b, max(1, int(b * rate))) for b in before], qa_idx),
            "random": summarize(hub, questions, requests, random_contexts,
                                [(b, max(1, sum(hub.count_tokens([c])))) for b, c in zip(before, random_contexts)], qa_idx),
        }
        for method in methods:
            idx = qa_idx if method in SLOW_METHODS else list(range(len(requests)))
            # Preservation compares on the same requests (a slow method runs on the QA sample only).
            baselines["first_k"]["preservation_same_requests"] = _preserved(questions, first_k_contexts, idx)
            baselines["random"]["preservation_same_requests"] = _preserved(questions, random_contexts, idx)
            t0 = time.time()
            results = [compressor.compress(_with(requests[i], method, rate)) for i in idx]
            elapsed = time.time() - t0
            figures = summarize(hub, [questions[i] for i in idx], [requests[i] for i in idx],
                                [r.context for r in results], [(r.tokens_before, r.tokens_after) for r in results],
                                list(range(len(qa_idx))))
            beats = all(
                figures["preservation"] > baselines[b]["preservation_same_requests"] and figures["f1"] > baselines[b]["f1"]
                for b in ("first_k", "random")
            )
            print(json.dumps({
                "bench": "quality", "target": target, "method": method, **figures,
                "ms_per_request": round(1000 * elapsed / max(len(idx), 1), 1),
                "beats_baselines": beats, "baselines": json.loads(json.dumps(baselines)),
            }), flush=True)
    print(json.dumps({"bench": "quality", "elapsed_s": round(time.time() - started, 1)}), flush=True)


def _preserved(questions: list[squad.Question], contexts: list[str], idx: list[int]) -> float:
    return round(float(np.mean([any(a in contexts[i] for a in questions[i].answers) for i in idx])), 4)


def _with(request: CompressRequest, method: str, rate: float) -> CompressRequest:
    return dataclasses.replace(request, method=method, rate=rate)


if __name__ == "__main__":
    main()
