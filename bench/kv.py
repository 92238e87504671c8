"""KV blobs on the shipped LLM (SmolLM2-135M, fp32, CPU unless a GPU is present).

    python bench/kv.py [--quick] [--split test] [--parts ttft,agreement,reuse] [--transform-steps 6e-4,1e-3]
                       [--head-steps 1e-3,2e-3] [--record NAME]

Data: paragraphs of one split of SQuAD dev's articles (default test; the KV
transform was calibrated on the train articles and its step chosen on dev with
`--split dev --parts agreement --transform-steps ...`). One JSON object per line:
  ttft       time to first token for context + question: full prefill vs loading
             the context's blob (decode + DynamicCache) and running only the question
             (512, 2k, 4k context tokens); both paths timed the same number of times
             (--repeats), median with min and max
  size       blob bytes for every codec (zstd 3) vs raw fp16 K/V
  codec      encode / decode throughput in GB/s of raw fp16 K/V (median of --repeats); for
             headpca also its parts: transform + quantise, entropy code, and the rest
             (stacking the layers, safetensors, checksum)
  agreement  per codec, next-token top-1 agreement with full prefill on two questions
             per paragraph, with a bootstrap 95% interval, the mean |logit diff| max,
             the size ratio on those (short, ~150-token) paragraphs, and the full
             prefill's top-2 logit margin at every miss (how near a tie it was);
             `transform@STEP` / `headpca@STEP` rows code with another quantization step
             (the rate-quality curve), `headpca-uniform@STEP` without attention weights
  non_prefix_reuse  three documents cached separately, re-rotated and concatenated,
             then a question: next-token agreement with full prefill at 0/15/30%
             recompute, with intervals
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from common import Record, add_split_argument, header, split_paragraphs

from ctxcomp import models
from ctxcomp.kv import blob
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv import head_pca
from ctxcomp.kv.prefill import ATTENTION_QUERIES, prefill
from ctxcomp.kv.reuse import blend, concatenate
from ctxcomp.evaluate import bootstrap_interval
from transformers import DynamicCache


CODECS = ("fp16", "int8", "int4", "transform", "headpca")


def timed(fn, repeat: int) -> tuple[object, list[float]]:
    """The last output and every run's seconds (the first run included: no path gets a warm-up
    the other lacks)."""
    seconds, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return out, seconds


def spread(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 4), "min": round(min(seconds), 4),
            "max": round(max(seconds), 4), "runs": len(seconds)}


@torch.inference_mode()
def next_token_from_blob(llm, data: bytes, question: torch.Tensor, start: int) -> torch.Tensor:
    cache, _ = cache_from_blob(data, llm)
    positions = torch.arange(start, start + question.shape[1]).unsqueeze(0)
    return llm.model(question, past_key_values=cache, position_ids=positions).logits[:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="ttft,agreement,reuse")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path")
    parser.add_argument("--questions", type=int, default=200, help="agreement questions (two per paragraph)")
    parser.add_argument("--transform-steps", default="", help="extra quantization steps to measure, comma-separated")
    parser.add_argument("--head-steps", default="", help="headpca steps to measure (and without attention weights)")
    parser.add_argument("--record", default="", help="write the run as bench/results/NAME.json")
    add_split_argument(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    record = Record("kv")
    emit = record.emit
    emit(header("kv", args.split))
    llm = models.load_llm()
    paragraphs = split_paragraphs(args.split)
    transform = models.load_kv_transform()
    variants = {c: (c, transform, True) for c in CODECS}
    for step in filter(None, args.transform_steps.split(",")):
        variants[f"transform@{step}"] = ("transform", dataclasses.replace(transform, meta={**transform.meta, "step": float(step)}), True)
    for step in filter(None, args.head_steps.split(",")):
        stepped = dataclasses.replace(transform, heads=dataclasses.replace(transform.heads, step=float(step)))
        variants[f"headpca@{step}"] = ("headpca", stepped, True)
        variants[f"headpca-uniform@{step}"] = ("headpca", stepped, False)
    parts = set(args.parts.split(","))
    if "ttft" in parts:
        ttft_and_codecs(emit, llm, paragraphs, transform, [512, 2048] if args.quick else [512, 2048, 4096], args.repeats)
    if "agreement" in parts:
        agreement(emit, llm, paragraphs, variants, 12 if args.quick else args.questions)
    if "reuse" in parts:
        reuse_agreement(emit, llm, paragraphs, 8 if args.quick else 40)
    if args.record and not args.quick:
        print(f"wrote {record.write(args.record)}")


def ttft_and_codecs(emit, llm, paragraphs, transform, lengths: list[int], repeats: int) -> None:
    tok = llm.tokenizer
    corpus = tok("\n\n".join(p.context for p in paragraphs[:80]), add_special_tokens=False)["input_ids"]
    question = tok(" Question: Who is mentioned first? Answer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    for length in lengths:
        ids = torch.tensor([corpus[:length]])
        full_input = torch.cat([ids, question], 1)
        with torch.inference_mode():
            full_logits, full_s = timed(lambda: llm.model(full_input).logits[:, -1], repeats)
        data = blob_from_prefill(prefill(llm.model, ids), llm, ids[0].tolist(), codec="fp16")
        blob_logits, blob_s = timed(lambda: next_token_from_blob(llm, data, question, length), repeats)
        emit({"bench": "ttft", "context_tokens": length, "full_prefill_s": spread(full_s),
              "with_blob_s": spread(blob_s), "speedup": round(statistics.median(full_s) / statistics.median(blob_s), 1),
              "same_top1": bool(full_logits.argmax() == blob_logits.argmax()),
              "max_abs_logit_diff": round(float((full_logits - blob_logits).abs().max()), 5)})
        if length == 2048:
            sizes_and_codecs(emit, llm, ids, transform, repeats)


def sizes_and_codecs(emit, llm, ids: torch.Tensor, transform, repeats: int) -> None:
    result = prefill(llm.model, ids, attention_queries=ATTENTION_QUERIES)
    raw = sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
    sizes = {c: len(blob_from_prefill(result, llm, ids[0].tolist(), codec=c, zstd_level=3)) for c in CODECS}
    emit({"bench": "size", "context_tokens": ids.shape[1], "raw_fp16_bytes": raw,
          **{f"{c}_bytes": n for c, n in sizes.items()},
          **{f"{c}_vs_fp16": round(raw / n, 2) for c, n in sizes.items()}})
    for codec in CODECS:
        meta = blob.BlobMeta(llm.fingerprint, "m", len(result.keys), result.keys[0].shape[1], result.keys[0].shape[3],
                             ids.shape[1], blob.token_ids_digest(ids[0].tolist()), 0, 0.0, **blob.rope_fields(result.rope))
        encoded, enc_s = timed(lambda: blob.encode(result.keys, result.values, meta, codec=codec, transform=transform,
                                                    attention=result.attention), repeats)
        _, dec_s = timed(lambda: blob.decode(encoded, expect_fingerprint=llm.fingerprint, transform=transform), repeats)
        line = {"bench": "codec", "codec": codec, "context_tokens": ids.shape[1], "encode_gb_s": round(raw / statistics.median(enc_s) / 1e9, 2),
                "decode_gb_s": round(raw / statistics.median(dec_s) / 1e9, 2), "encode_ms": spread([1e3 * x for x in enc_s]),
                "decode_ms": spread([1e3 * x for x in dec_s])}
        if codec == "headpca":
            line.update(head_pca_parts(result, transform.heads, meta, repeats, statistics.median(enc_s), statistics.median(dec_s)))
        emit(line)


def head_pca_parts(result, bases, meta, repeats: int, encode_s: float, decode_s: float) -> dict:
    """The headpca codec's time by part (median ms of `repeats` runs of each part alone): transform +
    quantise (basis products, RoPE, rounding), entropy coding, and the rest of the whole blob's time."""
    k = torch.stack([x[0] for x in result.keys])
    v = torch.stack([x[0] for x in result.values])
    plan = head_pca.plan(bases, bases.step, blob.SINK_TOKENS, k.shape[2], result.attention)
    rope = blob.meta_rope(meta)
    parts: dict[str, list[float]] = {}
    for _ in range(repeats):
        timings: dict[str, float] = {}
        coded = head_pca.encode(k, v, rope, bases, bases.step, plan, timings)
        head_pca.decode(coded, rope, bases, bases.step, plan, torch.empty_like(k), torch.empty_like(v), decode_timings := {})
        for name, seconds in [*(("encode_" + n, x) for n, x in timings.items()), *(("decode_" + n, x) for n, x in decode_timings.items())]:
            parts.setdefault(name, []).append(1e3 * seconds)
    medians = {f"{name}_ms": round(statistics.median(ms), 1) for name, ms in parts.items()}
    medians["encode_rest_ms"] = round(1e3 * encode_s - medians["encode_transform_quantise_ms"] - medians["encode_entropy_code_ms"], 1)
    medians["decode_rest_ms"] = round(1e3 * decode_s - medians["decode_transform_quantise_ms"] - medians["decode_entropy_code_ms"], 1)
    medians["coded_components_per_head"] = round(float(plan.components.mean()), 1)
    return medians


def agreement(emit, llm, paragraphs, variants: dict, count: int) -> None:
    """Two questions per paragraph: does the blob's next token match a full prefill's?"""
    tok = llm.tokenizer
    pairs = [(p, q) for p in paragraphs for q in p.questions[:2]][:count]
    hits = {v: [] for v in variants}
    diffs = {v: [] for v in variants}
    sizes = {v: 0 for v in variants}
    margins = {v: [] for v in variants}
    raw = 0
    for para, q in pairs:
        ids = tok(para.context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        qids = tok(f"\nQuestion: {q.text}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            want = llm.model(torch.cat([ids, qids], 1)).logits[0, -1]
        top2 = want.topk(2).values
        result = prefill(llm.model, ids, attention_queries=ATTENTION_QUERIES)
        raw += sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
        for name, (codec, transform, weighted) in variants.items():
            source = result if weighted else dataclasses.replace(result, attention=None)
            data = blob_from_prefill(source, llm, ids[0].tolist(), codec=codec, zstd_level=3, transform=transform)
            got = next_token_from_blob(llm, data, qids, ids.shape[1])[0]
            hits[name].append(int(got.argmax() == want.argmax()))
            diffs[name].append(float((got - want).abs().max()))
            sizes[name] += len(data)
            if not hits[name][-1]:
                margins[name].append(round(float(top2[0] - top2[1]), 3))
    for name in variants:
        emit({"bench": "agreement", "codec": name, "questions": len(pairs),
              "top1": round(sum(hits[name]) / len(pairs), 4), "interval95": bootstrap_interval(hits[name]),
              "mean_max_abs_logit_diff": round(sum(diffs[name]) / len(pairs), 4),
              "vs_fp16": round(raw / sizes[name], 2), "top2_margins_of_misses": margins[name]})


@torch.inference_mode()
def reuse_agreement(emit, llm, paragraphs, count: int) -> None:
    """Three documents cached separately, concatenated at new positions, then a question:
    next-token agreement with a full prefill of the same text, per recompute ratio."""
    tok = llm.tokenizer
    ratios = (0.0, 0.15, 0.3)
    hits = {r: [] for r in ratios}
    by_article: dict[str, list] = {}
    for p in paragraphs:
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
            hits[ratio].append(int(got == want))
    for ratio in ratios:
        emit({"bench": "non_prefix_reuse", "requests": len(groups), "documents_per_request": 3,
              "recompute": ratio, "top1_agreement": round(sum(hits[ratio]) / len(groups), 4),
              "interval95": bootstrap_interval(hits[ratio])})


def report(path) -> str:
    """Markdown tables of a kv result record: agreement (the rate-quality curve), codec speed, sizes,
    time to first token, non-prefix reuse; each only when the run measured it."""
    from common import run_line

    record = json.loads(Path(path).read_text())
    lines = record["lines"]
    out = [f"From {run_line(record)}.", ""]
    agreement_rows = [x for x in lines if x.get("bench") == "agreement"]
    if agreement_rows:
        out += ["| codec | top-1 agreement [95% CI] | smaller than fp16 | mean max \\|logit diff\\| | misses (top-2 margin) |",
                "|---|---|---|---|---|"]
        for x in sorted(agreement_rows, key=lambda x: (x["codec"].split("@")[0], x["vs_fp16"])):
            low, high = x["interval95"]
            misses = ", ".join(f"{m:.3f}" for m in x["top2_margins_of_misses"][:6])
            more = len(x["top2_margins_of_misses"]) - 6
            out.append(f"| {x['codec']} | {x['top1']:.3f} [{low:.3f}, {high:.3f}] | {x['vs_fp16']:.2f}x | "
                       f"{x['mean_max_abs_logit_diff']:.3f} | {misses}{f' and {more} more' if more > 0 else ''} |")
        out += ["", f"{agreement_rows[0]['questions']} questions.", ""]
    codec_rows = [x for x in lines if x.get("bench") == "codec"]
    if codec_rows:
        out += ["| codec (2,048 tokens) | encode GB/s | decode GB/s | encode ms | decode ms |", "|---|---|---|---|---|"]
        for x in codec_rows:
            out.append(f"| {x['codec']} | {x['encode_gb_s']:.2f} | {x['decode_gb_s']:.2f} | "
                       f"{x['encode_ms']['median']:.1f} | {x['decode_ms']['median']:.1f} |")
        for x in codec_rows:
            if "encode_transform_quantise_ms" in x:
                out += ["", f"headpca by part, ms (encode / decode): transform + quantise {x['encode_transform_quantise_ms']} / "
                        f"{x['decode_transform_quantise_ms']}, entropy code {x['encode_entropy_code_ms']} / {x['decode_entropy_code_ms']}, "
                        f"the rest (stacking the layers, safetensors, checksum, sinks) {x['encode_rest_ms']} / {x['decode_rest_ms']}; "
                        f"{x['coded_components_per_head']} of 64 components coded per head on average."]
        out.append("")
    for x in lines:
        if x.get("bench") == "size":
            sizes = ", ".join(f"{c} {x[f'{c}_vs_fp16']}x" for c in CODECS if f"{c}_vs_fp16" in x)
            out += [f"Blob size at {x['context_tokens']} tokens (zstd 3), smaller than fp16 K/V by: {sizes}.", ""]
    ttft_rows = [x for x in lines if x.get("bench") == "ttft"]
    if ttft_rows:
        out += ["| context tokens | full prefill s | from an fp16 blob s | speed-up | same top-1 |", "|---|---|---|---|---|"]
        out += [f"| {x['context_tokens']} | {x['full_prefill_s']['median']} | {x['with_blob_s']['median']} | "
                f"{x['speedup']}x | {x['same_top1']} |" for x in ttft_rows]
        out.append("")
    reuse_rows = [x for x in lines if x.get("bench") == "non_prefix_reuse"]
    if reuse_rows:
        out += ["| recompute | top-1 agreement [95% CI] |", "|---|---|"]
        out += [f"| {x['recompute']:.0%} | {x['top1_agreement']:.3f} [{x['interval95'][0]:.3f}, {x['interval95'][1]:.3f}] |"
                for x in reuse_rows]
        out += ["", f"{reuse_rows[0]['requests']} requests of {reuse_rows[0]['documents_per_request']} documents.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
