"""Calibrate the relevance model on the dev split and tune the cascade's settings there.

    python -m training.calibrate_relevance [--folder ctxcomp/models/relevance] [--questions 300]

Dev = the training articles train_relevance.py held apart (never the test quarter
that bench/quality.py reports on). Writes into the folder's config.json:
- sentence_threshold: the sentence-head probability that keeps 90% of answer
  sentences of gold paragraphs (EXIT's calibrated threshold);
- document_threshold: the document probability that 97% of gold paragraphs
  pass (the selective gate), with the share of off-topic requests it rejects;
- dev metrics: rerank top-1 of the document head against bi-encoder cosine on
  5-paragraph requests, answer-sentence recall;
- cascade: gold-answer preservation on dev at 3x/5x/10x for each setting tried,
  and the one chosen (ctxcomp/methods/cascade.py takes it as its default).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
from pathlib import Path

import numpy as np

from ctxcomp import relevance
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodItem
from ctxcomp.methods.cascade import CascadeConfig, compress_scored
from ctxcomp.models import relevance_model
from training import squad
from training.train_relevance import SEED, overlaps
from ctxcomp.types import CompressRequest, Document

OTHERS = 4
TARGETS = {"3x": 1 / 3, "5x": 0.2, "10x": 0.1}
# A wider grid (temperature 4 and 8, drop_below 0.01) gained at most 1 of 300 dev requests: not worth the choice.
GRID = {"token_weight": (0.0, 0.3, 1.0), "temperature": (0.5, 1.0, 2.0), "drop_below": (0.05,)}


def dev_requests(n: int) -> tuple[list[tuple[squad.Question, CompressRequest, int]], list[CompressRequest]]:
    """(on-topic: question, request of gold + 4 same-article paragraphs, gold index), and
    off-topic requests (the same questions over 4 paragraphs of other dev articles)."""
    dev = squad.splits().dev
    rng = random.Random(SEED)
    by_article: dict[str, list[squad.Paragraph]] = {}
    for p in dev:
        by_article.setdefault(p.article, []).append(p)
    pairs = [(p, q) for p in dev for q in p.questions]
    rng.shuffle(pairs)
    on, off = [], []
    for p, q in pairs[:n]:
        docs = [p, *rng.sample([o for o in by_article[p.article] if o.index != p.index], OTHERS)]
        rng.shuffle(docs)
        on.append((q, as_request(q.text, docs), docs.index(p)))
        others = [o for o in dev if o.article != p.article]
        off.append(as_request(q.text, rng.sample(others, OTHERS)))
    return on, off


def as_request(query: str, paragraphs: list[squad.Paragraph]) -> CompressRequest:
    return CompressRequest(query, tuple(Document(f"{p.article}#{p.index}", p.context) for p in paragraphs))


def answer_sentences(doc: relevance.DocumentScores, question: squad.Question) -> set[int]:
    hit = np.zeros(len(doc.words), bool)
    for text, start in zip(question.answers, question.answer_starts):
        hit |= overlaps(doc.words, start, text)
    return set(doc.sentence_of_word[hit].tolist())


def calibrate(hub: ModelHub, on, scored, off_scored) -> dict:
    gold_doc = [scores[g].probability for (_, _, g), scores in zip(on, scored)]
    answer_probs, all_probs = [], []
    for (q, _, g), scores in zip(on, scored):
        probs = relevance.sigmoid(scores[g].sentence_logits)
        answer_probs += [probs[i] for i in answer_sentences(scores[g], q) if i < len(probs)]
        all_probs += [p for d in scores for p in relevance.sigmoid(d.sentence_logits)]
    sentence_threshold = float(np.quantile(answer_probs, 0.10))
    document_threshold = float(np.quantile(gold_doc, 0.03))
    off_best = [max(d.probability for d in scores) for scores in off_scored]
    top1 = np.mean([int(np.argmax([d.relevance for d in scores])) == g for (_, _, g), scores in zip(on, scored)])
    return {
        "sentence_threshold": round(sentence_threshold, 4),
        "document_threshold": round(document_threshold, 4),
        "dev": {
            "requests": len(on),
            "rerank_top1": round(float(top1), 4),
            "rerank_top1_bi_encoder_cosine": round(cosine_top1(hub, on), 4),
            "answer_sentence_recall_at_threshold": round(float(np.mean(np.asarray(answer_probs) > sentence_threshold)), 4),
            "sentences_kept_at_threshold": round(float(np.mean(np.asarray(all_probs) > sentence_threshold)), 4),
            "gate_on_topic_pass": round(float(np.mean(np.asarray(gold_doc) > document_threshold)), 4),
            "gate_off_topic_rejected": round(float(np.mean(np.asarray(off_best) <= document_threshold)), 4),
        },
    }


def cosine_top1(hub: ModelHub, on) -> float:
    """Rerank baseline: the paragraph whose sentence-encoder embedding is closest to the query's."""
    from ctxcomp.embedding import embed

    hits = []
    for _, request, gold in on:
        vectors = embed(hub, [request.query, *[d.text for d in request.documents]])
        hits.append(int(np.argmax(vectors[1:] @ vectors[0])) == gold)
    return float(np.mean(hits))


def tune_cascade(hub: ModelHub, on, scored) -> dict:
    """Preservation on dev for each grid setting; the best by mean over the targets."""
    before = [tuple(hub.count_tokens([d.text for d in r.documents])) for _, r, _ in on]
    results = {}
    for weight, temperature, drop in itertools.product(GRID["token_weight"], GRID["temperature"], GRID["drop_below"]):
        config = CascadeConfig(token_weight=weight, temperature=temperature, drop_below=drop)
        row = {}
        for target, rate in TARGETS.items():
            kept = 0
            for (q, request, _), scores, tokens in zip(on, scored, before):
                item = MethodItem(dataclasses.replace(request, rate=rate), config, tokens)
                context = "\n\n".join(d.text for d in compress_scored(hub, item, scores).documents)
                kept += any(a in context for a in q.answers)
            row[target] = round(kept / len(on), 4)
        results[f"token_weight={weight},temperature={temperature},drop_below={drop}"] = row
    best = max(results, key=lambda k: sum(results[k].values()))
    return {"grid": results, "chosen": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(relevance_model.WEIGHTS_DIR))
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--no-tune", action="store_true", help="thresholds and metrics only")
    args = parser.parse_args()
    run(Path(args.folder), args.questions, tune=not args.no_tune)


def run(folder: Path, questions: int, tune: bool = True) -> dict:
    hub = ModelHub({"relevance": str(folder)})
    on, off = dev_requests(questions)
    scored = relevance.score(hub, [r for _, r, _ in on])
    off_scored = relevance.score(hub, off)
    meta = json.loads((folder / "config.json").read_text())
    meta.update(calibrate(hub, on, scored, off_scored))
    hub.get("relevance").meta.update(meta)  # the cascade tuned below reads the thresholds just set
    if tune:
        meta["cascade_dev"] = tune_cascade(hub, on, scored)
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: meta[k] for k in ("sentence_threshold", "document_threshold", "dev")}), flush=True)
    if "cascade_dev" in meta:
        print(json.dumps(meta["cascade_dev"]), flush=True)
    return meta


if __name__ == "__main__":
    main()
