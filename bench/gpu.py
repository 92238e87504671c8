"""GPU figures: compression throughput per method against the reference `llmlingua`, time to
first token with a KV blob against a full prefill on a real-size LLM shape, and KV blob codecs.

    python bench/gpu.py [--quick] [--device cuda[:N]] [--parts compress,ttft,codec] [--repeats 5]

Without a GPU it prints one line saying "not measured: no GPU" and exits, unless
`--device cpu` is asked for: that runs the same code on a tiny LLM shape and a few
requests (a smoke run, which CI does; its figures are not GPU figures and say so).

Parts, one JSON object per line, each figure with its baseline from the same run:
  compress  5-document requests (test-article SQuAD: the gold paragraph among 4 others of
            its article). Every method through Compressor on a hub placed on the device
            (encoders and LLM in bf16): all requests in one compress_batch, and one request
            at a time; requests/s. Baseline: the reference llmlingua's LLMLingua-2 loading
            our token classifier's checkpoint on the same device, one call per request, on
            the same requests at the same rate; ratio = ours / reference requests/s.
            `llmlingua2:compat` is the like-for-like pair (the reference's own decisions).
            --quick: 16 requests; cascade, llmlingua2 and llmlingua2:compat.
  ttft      an LLM with a real architecture's shape and random weights, built from its
            config on the device in bf16 (no download): Llama-3.1-8B (--quick: Llama-3.2-1B;
            --device cpu: a 2-layer Llama-3), at 2k, 8k and 32k context tokens (--quick: 2k)
            and a 16-token question. Time to the question's logits: a full prefill of
            context + question (the model's own forward) against decoding the context's fp16
            blob into a DynamicCache on the device and running only the question; also the
            time to make the blob (our prefill, fused Triton attention on CUDA, then encode).
            Same top-1 and the max |logit difference| of the two paths.
  codec     encode / decode GB/s of raw fp16 K/V per codec (fp16, bf16, int8, int4) on the
            2k context's K/V of the ttft model: tensors on the device in, blob bytes in host
            memory out, and back (decode, then the copy to the device). `transform` is left
            out: it is calibrated for the shipped SmolLM2 only (bench/kv.py measures it).

Timing: wall clock around each call with the device synchronized, after one untimed run;
the median of --repeats runs (default 5, --quick 2) with min and max.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import Record, header, split_paragraphs

from ctxcomp.kv import blob
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv.prefill import prefill

METHODS = ("cascade", "llmlingua2", "exit", "recomp_extractive", "mig", "llmlingua2:compat")
QUICK_METHODS = ("cascade", "llmlingua2", "llmlingua2:compat")
RATE = 0.2
QUESTION_TOKENS = 16
CODECS = ("fp16", "bf16", "int8", "int4")
RECORD = Record("gpu")
LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SHAPES = {  # the published configs' shapes; weights are random
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_parameters=LLAMA3_ROPE),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         rope_parameters={**LLAMA3_ROPE, "factor": 32.0}),
    "tiny-llama-3": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, rope_parameters=LLAMA3_ROPE),
}


@dataclasses.dataclass
class RandomLLM:
    """What the KV code reads of a loaded LLM, for a random-weight model built from a config."""

    model: Any
    fingerprint: str
    path: Path


def synchronized(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[Any, list[float]]:
    """fn's last output and the seconds of each of `repeats` runs after one untimed run."""
    sync = synchronized(device)
    out = fn()
    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return out, seconds


def spread(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 5), "min": round(min(seconds), 5),
            "max": round(max(seconds), 5), "runs": len(seconds)}


def random_llm(shape: str, device: str, dtype: torch.dtype) -> RandomLLM:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", max_position_embeddings=131072, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    return RandomLLM(model, f"random-{shape}", Path(shape))


def last_logits(model: Any, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, logits_to_keep=1, **kwargs).logits[:, -1].float()


def ttft_row(llm: RandomLLM, context: int, device: str, repeats: int) -> tuple[dict, Any]:
    """One context length: full prefill vs the blob path; returns the row and the prefill."""
    vocab = llm.model.config.vocab_size
    generator = torch.Generator().manual_seed(context)
    ids = torch.randint(vocab, (1, context), generator=generator).to(device)
    question = torch.randint(vocab, (1, QUESTION_TOKENS), generator=generator).to(device)
    full_input = torch.cat([ids, question], 1)
    positions = torch.arange(context, context + QUESTION_TOKENS, device=device)[None]
    full, full_s = timed(lambda: last_logits(llm.model, full_input), device, repeats)
    token_ids = ids[0].tolist()
    result = prefill(llm.model, ids)
    data, make_s = timed(lambda: blob_from_prefill(prefill(llm.model, ids), llm, token_ids, codec="fp16"), device, repeats)

    def with_blob() -> torch.Tensor:
        cache, _ = cache_from_blob(data, llm)
        return last_logits(llm.model, question, past_key_values=cache, position_ids=positions)

    from_blob, blob_s = timed(with_blob, device, repeats)
    row = {"context_tokens": context, "question_tokens": QUESTION_TOKENS, "blob_bytes": len(data),
           "full_prefill_s": spread(full_s), "with_blob_s": spread(blob_s), "make_blob_s": spread(make_s),
           "speedup": round(statistics.median(full_s) / statistics.median(blob_s), 2),
           "same_top1": bool(full.argmax() == from_blob.argmax()),
           "max_abs_logit_diff": round(float((full - from_blob).abs().max()), 4), "prefill_backend": result.backend}
    return row, result


def codec_rows(llm: RandomLLM, result: Any, device: str, repeats: int) -> list[dict]:
    raw = sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
    first = result.keys[0]
    meta = blob.BlobMeta(llm.fingerprint, llm.path.name, len(result.keys), first.shape[1], first.shape[3], first.shape[2],
                         "0" * 64, 0, 0.0, **blob.rope_fields(result.rope))
    rows = []
    for codec in CODECS:
        encoded, enc_s = timed(lambda: blob.encode(result.keys, result.values, meta, codec=codec), device, repeats)

        def decode_to_device() -> tuple[torch.Tensor, torch.Tensor]:
            k, v, _ = blob.decode(encoded, expect_fingerprint=llm.fingerprint)
            return k.to(device), v.to(device)

        (k, _), dec_s = timed(decode_to_device, device, repeats)
        rows.append({"codec": codec, "raw_fp16_bytes": raw, "blob_bytes": len(encoded),
                     "encode_gb_s": round(raw / statistics.median(enc_s) / 1e9, 3),
                     "decode_gb_s": round(raw / statistics.median(dec_s) / 1e9, 3),
                     "max_abs_k_err": round(float((k.float() - torch.stack(result.keys)[:, 0].float()).abs().max()), 4)})
    return rows


def measure_kv(args: argparse.Namespace, where: dict) -> None:
    """The ttft part (and the codec part, on the 2k context's K/V)."""
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    shape = "tiny-llama-3" if args.device == "cpu" else "llama-3.2-1b" if args.quick else "llama-3.1-8b"
    llm = random_llm(shape, args.device, dtype)
    lengths = [2048] if args.quick else [2048, 8192, 32768]
    parts = set(args.parts.split(","))
    for context in lengths if "ttft" in parts else [2048]:
        row, result = ttft_row(llm, context, args.device, args.repeats)
        if "ttft" in parts:
            RECORD.emit({"bench": "gpu", "part": "ttft", **where, "llm_shape": shape, "dtype": str(dtype), **row})
        if context == 2048 and "codec" in parts:
            for codec_row in codec_rows(llm, result, args.device, args.repeats):
                RECORD.emit({"bench": "gpu", "part": "codec", **where, "llm_shape": shape, **codec_row})
        del result
    del llm


def measure_compression(args: argparse.Namespace, where: dict) -> None:
    """Every method on the device against the reference LLMLingua-2 on the same device."""
    from llmlingua2_vs_reference import reference_compressor
    from quality import build_requests

    from ctxcomp.hub import ModelHub
    from ctxcomp.pipeline import Compressor

    count = 8 if args.device == "cpu" else 16 if args.quick else 200
    requests = [dataclasses.replace(r, rate=RATE) for _, r, _ in build_requests(split_paragraphs("test"), count)]
    hub = ModelHub(device=args.device)
    compressor = Compressor(hub)
    classifier = ModelHub(device="cpu", precision="fp32").get("token_classifier", "fp32")
    reference = reference_compressor(classifier, args.device)

    def reference_all() -> None:
        for r in requests:
            reference.compress_prompt_llmlingua2([d.text for d in r.documents], rate=RATE)

    _, reference_s = timed(reference_all, args.device, args.repeats)
    baseline = len(requests) / statistics.median(reference_s)
    for name in (QUICK_METHODS if args.quick else METHODS):
        method, _, mode = name.partition(":")
        mine = [dataclasses.replace(r, method=method, options={"mode": mode} if mode else {}) for r in requests]
        _, batch_s = timed(lambda: compressor.compress_batch(mine), args.device, args.repeats)
        _, single_s = timed(lambda: [compressor.compress(r) for r in mine], args.device, args.repeats)
        batched, single = len(mine) / statistics.median(batch_s), len(mine) / statistics.median(single_s)
        RECORD.emit({"bench": "gpu", "part": "compress", **where, "method": name, "requests": len(mine), "rate": RATE,
                     "batched_req_per_s": round(batched, 2), "single_req_per_s": round(single, 2),
                     "reference_llmlingua2_req_per_s": round(baseline, 2),
                     "batched_vs_reference": round(batched / baseline, 2),
                     "single_vs_reference": round(single / baseline, 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Llama-3.2-1B shape at 2k tokens; 16 requests, 3 methods; 2 timed runs")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run on a tiny shape")
    parser.add_argument("--parts", default="compress,ttft,codec")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps(header("gpu", None, result="not measured: no GPU", torch=torch.__version__)), flush=True)
        return
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "none (smoke run on cpu)"
    RECORD.emit(header("gpu", "test", device=args.device, gpu=gpu, torch=torch.__version__))
    where = {"device": args.device, "gpu": gpu}
    if {"ttft", "codec"} & set(args.parts.split(",")):
        measure_kv(args, where)
    if "compress" in args.parts.split(","):
        measure_compression(args, where)
    if args.device.startswith("cuda") and not args.quick:  # a CPU run is a smoke run, not a figure
        print(f"result record: {RECORD.write()}")


if __name__ == "__main__":
    main()
