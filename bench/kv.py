"""KV blobs on the shipped LLM (SmolLM2-135M, fp32, CPU unless a GPU is present).

    python bench/kv.py [--quick]

Prints one JSON object per line:
  ttft       time to first token for context + question: full prefill vs loading
             the context's blob (decode + DynamicCache) and running only the question
             (512, 2k, 4k context tokens)
  size       blob bytes for fp16 / int8 / int4 / transform (zstd 3) vs raw fp16 K/V
  agreement  next-token top-1 agreement with full prefill on held-out SQuAD questions, per
             codec, with the mean and max |logit diff| and each codec's size ratio on those
             (short, ~150-token) paragraphs
  codec      encode / decode throughput in GB/s of raw fp16 K/V
  non_prefix_reuse  three documents cached separately, re-rotated and concatenated,
             then a question: next-token agreement with full prefill at 0/15/30% recompute
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctxcomp import models
from ctxcomp.kv import blob
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.reuse import blend, concatenate
from transformers import DynamicCache
from ctxcomp.models.training import squad


CODECS = ("fp16", "int8", "int4", "transform")


def timed(fn, repeat: int = 3) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


@torch.inference_mode()
def next_token_from_blob(llm, data: bytes, question: torch.Tensor, start: int) -> torch.Tensor:
    cache, _ = cache_from_blob(data, llm)
    positions = torch.arange(start, start + question.shape[1]).unsqueeze(0)
    return llm.model(question, past_key_values=cache, position_ids=positions).logits[:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    llm = models.load_llm()
    tok = llm.tokenizer
    held = squad.split_articles(squad.load_paragraphs())[1]
    corpus = tok("\n\n".join(p.context for p in held[:80]), add_special_tokens=False)["input_ids"]
    question = tok(" Question: Who is mentioned first? Answer:", return_tensors="pt", add_special_tokens=False)["input_ids"]

    for length in ([512, 2048] if args.quick else [512, 2048, 4096]):
        ids = torch.tensor([corpus[:length]])
        full_input = torch.cat([ids, question], 1)
        with torch.inference_mode():
            full_logits, full_s = timed(lambda: llm.model(full_input).logits[:, -1], repeat=1 if length > 2048 else 2)
        data = blob_from_prefill(prefill(llm.model, ids), llm, ids[0].tolist(), codec="fp16")
        blob_logits, blob_s = timed(lambda: next_token_from_blob(llm, data, question, length))
        print(json.dumps({"bench": "ttft", "context_tokens": length, "full_prefill_s": round(full_s, 3),
                          "with_blob_s": round(blob_s, 3), "speedup": round(full_s / blob_s, 1),
                          "same_top1": bool(full_logits.argmax() == blob_logits.argmax()),
                          "max_abs_logit_diff": round(float((full_logits - blob_logits).abs().max()), 5)}), flush=True)

        if length == 2048:
            result = prefill(llm.model, ids)
            raw = sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
            sizes = {c: len(blob_from_prefill(result, llm, ids[0].tolist(), codec=c, zstd_level=3)) for c in CODECS}
            print(json.dumps({"bench": "size", "context_tokens": length, "raw_fp16_bytes": raw, **{f"{c}_bytes": n for c, n in sizes.items()},
                              **{f"{c}_vs_fp16": round(raw / n, 2) for c, n in sizes.items()}}), flush=True)
            transform = models.load_kv_transform()
            for codec in CODECS:
                meta = blob.BlobMeta(llm.fingerprint, "m", len(result.keys), result.keys[0].shape[1], result.keys[0].shape[3],
                                     length, blob.token_ids_digest(ids[0].tolist()), 0, 0.0, **blob.rope_fields(result.rope))
                encoded, enc_s = timed(lambda: blob.encode(result.keys, result.values, meta, codec=codec, transform=transform))
                _, dec_s = timed(lambda: blob.decode(encoded, expect_fingerprint=llm.fingerprint, transform=transform))
                print(json.dumps({"bench": "codec", "codec": codec, "encode_gb_s": round(raw / enc_s / 1e9, 2),
                                  "decode_gb_s": round(raw / dec_s / 1e9, 2)}), flush=True)

    # Two questions per held-out paragraph (the transform was calibrated on training articles).
    pairs = [(p, q) for p in held for q in p.questions[:2]][: 12 if args.quick else 200]
    agree, diffs, sizes = {c: 0 for c in CODECS}, {c: [] for c in CODECS}, {c: 0 for c in CODECS}
    raw = 0
    for para, q in pairs:
        ids = tok(para.context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        qids = tok(f"\nQuestion: {q.text}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            want = llm.model(torch.cat([ids, qids], 1)).logits[0, -1]
        result = prefill(llm.model, ids)
        raw += sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
        for codec in CODECS:
            data = blob_from_prefill(result, llm, ids[0].tolist(), codec=codec, zstd_level=3)
            got = next_token_from_blob(llm, data, qids, ids.shape[1])[0]
            agree[codec] += int(got.argmax() == want.argmax())
            diffs[codec].append(float((got - want).abs().max()))
            sizes[codec] += len(data)
    print(json.dumps({"bench": "agreement", "questions": len(pairs), **{f"{c}_top1": round(n / len(pairs), 4) for c, n in agree.items()},
                      **{f"{c}_mean_max_abs_logit_diff": round(sum(d) / len(d), 4) for c, d in diffs.items()},
                      **{f"{c}_vs_fp16": round(raw / n, 2) for c, n in sizes.items()}}), flush=True)
    reuse_agreement(llm, held, 8 if args.quick else 40)


@torch.inference_mode()
def reuse_agreement(llm, held, count: int) -> None:
    """Three documents cached separately, concatenated at new positions, then a question:
    next-token agreement with a full prefill of the same text, per recompute ratio."""
    tok = llm.tokenizer
    ratios = (0.0, 0.15, 0.3)
    hits = {r: 0 for r in ratios}
    by_article: dict[str, list] = {}
    for p in held:
        by_article.setdefault(p.article, []).append(p)
    groups = [ps[i : i + 3] for ps in by_article.values() for i in range(0, len(ps) - 2, 3)][:count]
    for group in groups:
        parts = [tok(p.context + "\n\n", return_tensors="pt", add_special_tokens=False)["input_ids"] for p in group]
        qids = tok(f"Question: {group[-1].questions[0].text}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
        context = torch.cat(parts, 1)
        want = llm.model(torch.cat([context, qids], 1)).logits[:, -1].argmax()
        cached = []
        for ids in parts:
            r = prefill(llm.model, ids)
            cached.append((torch.stack([k[0] for k in r.keys]), torch.stack([v[0] for v in r.values]), 0))
        k_cat, v_cat = concatenate(cached, rope=r.rope)
        for ratio in ratios:
            k, v = blend(llm.model, context, k_cat, v_cat, ratio)
            cache = DynamicCache()
            for layer in range(k.shape[0]):
                cache.update(k[layer].unsqueeze(0), v[layer].unsqueeze(0), layer)
            pos = torch.arange(context.shape[1], context.shape[1] + qids.shape[1]).unsqueeze(0)
            got = llm.model(qids, past_key_values=cache, position_ids=pos).logits[:, -1].argmax()
            hits[ratio] += int(got == want)
    print(json.dumps({"bench": "non_prefix_reuse", "requests": len(groups), "documents_per_request": 3,
                      **{f"top1_agreement_recompute_{int(r * 100)}pct": round(hits[r] / len(groups), 4) for r in ratios}}), flush=True)


if __name__ == "__main__":
    main()
