"""Calibrate the KV transform of the "transform" codec for the downstream LLM.

    python -m training.calibrate_kv_transform [--tiny] [--out FOLDER]

On SQuAD training articles (never the held-out ones the benches use):
1. prefill each paragraph; keep every layer's keys (before RoPE) and values,
   heads concatenated, leaving out the first tokens (attention sinks, which
   the codec stores exactly);
2. append a question, sample answer tokens y from the model's own next-token
   distribution and accumulate the Fisher information F = E[g g^T] of
   g = d log p(y) / d(K or V) per layer (how much each direction of K/V moves
   the answer);
3. per layer and role: A = (F + eps * mean-eigenvalue * I)^(1/2), PCA of x A,
   and save T = A U and offset = mean(x A) U (ctxcomp/models/kv_transform.py).
Quantizing x T with one step then gives every coefficient the same share of
the expected KL divergence of the answer distribution (reverse water-filling).
4. the same per KV head, from the head's block of F: the "headpca" codec's bases
   (head_pca.safetensors), with each component's standard deviation.
About 4 minutes on 2 CPU cores with the defaults. `--heads-only` writes only the
per-head bases (and their step into config.json), leaving transform.safetensors,
which existing blobs name by its digest, as it is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ctxcomp import models
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.transform import heads_together, to_post_rope, to_pre_rope
from ctxcomp.models import kv_transform
from training import squad

SINK_TOKENS = 4  # kept exactly by the codec, so left out of the statistics
DEFAULT_STEP = 8e-4  # chosen on dev (bench/kv.py --split dev): the largest step within a point of int8's top-1
DEFAULT_HEAD_STEP = 1e-3  # the headpca codec's, chosen on dev: the largest step with dev top-1 >= 0.99 (MODEL_CARD.md)


def collect(llm, paragraphs, *, questions_per_paragraph: int, samples: int, seed: int):
    """Pre-RoPE keys and values [L, N, C] of the paragraphs and the Fisher matrices [L, C, C] of both."""
    tok, model = llm.tokenizer, llm.model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    keys, values, fisher_k, fisher_v, answers = [], [], None, None, 0
    from transformers import DynamicCache

    for para in paragraphs:
        ids = tok(para.context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] <= SINK_TOKENS:
            continue
        result = prefill(model, ids)
        k_pre = to_pre_rope(torch.stack([k[0] for k in result.keys]), result.rope)
        v = torch.stack([v[0] for v in result.values])
        keys.append(heads_together(k_pre[:, :, SINK_TOKENS:]))
        values.append(heads_together(v[:, :, SINK_TOKENS:]))
        for question in para.questions[:questions_per_paragraph]:
            qids = tok(f"\nQuestion: {question.text}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
            k_leaf, v_leaf = k_pre.clone().requires_grad_(True), v.clone().requires_grad_(True)
            k_post = to_post_rope(k_leaf, result.rope)
            cache = DynamicCache()
            for layer in range(k_post.shape[0]):
                cache.update(k_post[layer][None], v_leaf[layer][None], layer)
            positions = torch.arange(ids.shape[1], ids.shape[1] + qids.shape[1])[None]
            logp = model(qids, past_key_values=cache, position_ids=positions).logits[0, -1].float().log_softmax(-1)
            for i, y in enumerate(torch.multinomial(logp.exp(), samples, replacement=True, generator=generator)):
                gk, gv = torch.autograd.grad(logp[y], (k_leaf, v_leaf), retain_graph=i < samples - 1)
                gk, gv = heads_together(gk[:, :, SINK_TOKENS:]).double(), heads_together(gv[:, :, SINK_TOKENS:]).double()
                step_k, step_v = gk.transpose(1, 2) @ gk, gv.transpose(1, 2) @ gv
                fisher_k = step_k if fisher_k is None else fisher_k + step_k
                fisher_v = step_v if fisher_v is None else fisher_v + step_v
            answers += samples
    if fisher_k is None:
        raise ValueError("no paragraph with a question to calibrate on")
    return torch.cat(keys, 1), torch.cat(values, 1), fisher_k / answers, fisher_v / answers


def fit(x: torch.Tensor, fisher: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [L, N, C], fisher [L, C, C] -> T [L, C, C] and offset [L, C] (components by falling variance)."""
    matrices, offsets = [], []
    eye = torch.eye(x.shape[-1], dtype=torch.float64)
    for layer in range(x.shape[0]):
        f = fisher[layer] + eps * fisher[layer].trace() / x.shape[-1] * eye
        lam, vec = torch.linalg.eigh(f)
        a = vec @ torch.diag(lam.clamp(min=0).sqrt()) @ vec.T
        white = x[layer].double() @ a
        mean = white.mean(0)
        centered = white - mean
        _, basis = torch.linalg.eigh(centered.T @ centered / len(white))
        basis = basis.flip(-1)
        matrices.append(a @ basis)
        offsets.append(mean @ basis)
    return torch.stack(matrices).float(), torch.stack(offsets).float()


def fit_heads(x: torch.Tensor, fisher: torch.Tensor, heads: int, eps: float) -> dict[str, torch.Tensor]:
    """x [L, N, C], fisher [L, C, C] -> per-head matrix [L, H, D, D], offset and component std [L, H, D]:
    `fit` on each head's columns with the head's block of the Fisher (cross-head terms dropped)."""
    layers, _, channels = x.shape
    dim = channels // heads
    matrices, offsets, stds = torch.empty(layers, heads, dim, dim), torch.empty(layers, heads, dim), torch.empty(layers, heads, dim)
    for head in range(heads):
        cols = slice(head * dim, (head + 1) * dim)
        matrix, offset = fit(x[:, :, cols], fisher[:, cols, cols], eps)
        matrices[:, head], offsets[:, head] = matrix, offset
        coefficients = torch.bmm(x[:, :, cols].float(), matrix) - offset[:, None, :]
        stds[:, head] = coefficients.std(dim=1)
    return {"matrix": matrices, "offset": offsets, "std": stds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=kv_transform.TRANSFORM_DIR)
    parser.add_argument("--paragraphs", type=int, default=80)
    parser.add_argument("--questions-per-paragraph", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="answer tokens sampled per question for the Fisher")
    parser.add_argument("--eps", type=float, default=1e-2, help="Fisher regularizer, relative to its mean eigenvalue")
    parser.add_argument("--step", type=float, default=DEFAULT_STEP, help="the codec's default quantization step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-step", type=float, default=DEFAULT_HEAD_STEP, help="the headpca codec's default step")
    parser.add_argument("--heads-only", action="store_true", help="write only the headpca codec's per-head bases")
    parser.add_argument("--tiny", action="store_true", help="3 paragraphs, for tests")
    args = parser.parse_args()
    if args.tiny:
        args.paragraphs, args.questions_per_paragraph, args.samples = 3, 1, 2
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    llm = models.load_llm()
    train = squad.splits().train
    paragraphs = train[::7][: args.paragraphs]
    keys, values, fisher_k, fisher_v = collect(
        llm, paragraphs, questions_per_paragraph=args.questions_per_paragraph, samples=args.samples, seed=args.seed
    )
    heads = llm.model.config.num_key_value_heads
    bases = {f"{role}_{name}": tensor for role, x, fisher in (("key", keys, fisher_k), ("value", values, fisher_v))
             for name, tensor in fit_heads(x, fisher, heads, args.eps).items()}
    calibration = {
        "eps": args.eps,
        "sink_tokens": SINK_TOKENS,
        "paragraphs": len(paragraphs),
        "tokens": keys.shape[1],
        "questions_per_paragraph": args.questions_per_paragraph,
        "samples_per_question": args.samples,
        "seed": args.seed,
        "data": "SQuAD v1.1 dev, train articles (squad.splits().train[::7]); steps chosen on dev by bench/kv.py --split dev",
    }
    if args.heads_only:
        meta = {**json.loads((args.out / "config.json").read_text()), "head_step": args.head_step}
        if meta["llm_fingerprint"] != llm.fingerprint:
            raise SystemExit(f"{args.out} is calibrated for another LLM ({meta['llm_id']}); calibrate it whole, without --heads-only")
        meta["head_seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    else:
        key_matrix, key_offset = fit(keys, fisher_k, args.eps)
        value_matrix, value_offset = fit(values, fisher_v, args.eps)
        meta = {"llm_fingerprint": llm.fingerprint, "llm_id": llm.path.name, "step": args.step, "head_step": args.head_step,
                **calibration, "seconds": round(time.perf_counter() - started, 1)}
        kv_transform.save(key_matrix, key_offset, value_matrix, value_offset, meta, args.out)
    kv_transform.save_heads(bases, args.out)
    print(json.dumps({"saved": str(args.out), **meta}))


if __name__ == "__main__":
    main()
