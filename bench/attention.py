"""Fused prefill attention (Triton, RoPE inside, K/V written in blob layout)
against the PyTorch path it replaces: RoPE in PyTorch + torch SDPA (flash
backend on CUDA) + the K/V transpose into the blob layout.

    python bench/attention.py [--quick] [--repeats 100] [--warmup 20]

Needs a CUDA GPU for the kernel; on CPU it times the reference alone and says so.
Timing: on CUDA each run is bracketed by CUDA events after `--warmup` untimed
runs, with the L2 cache flushed before every run; `--repeats` runs (at least 50)
give the median, the 10th and 90th percentiles and the minimum. Both paths get
the same warm-up and the same number of runs. One JSON object per line:
  floor   both paths at batch 1 x 16 tokens, where the work is negligible: what
          their launches cost (the kernel is one launch, the reference several)
  shape   per batch x seq: both paths' spread, TFLOP/s of the medians, the ratio
          reference / kernel of the medians, and each median minus its floor
  sweep   whether the kernel's median grows with the work over the batch-1 sweep
          (a time that falls while the work doubles says the run is not to be trusted)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import Record, header

from ctxcomp.kernels.attention import Rope, kernel_support, prefill_attention, reference_prefill

N_Q, N_KV, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
SWEEP = (128, 256, 512, 1024, 2048, 4096, 8192)
BATCHED = ((8, 2048), (32, 1024))


def run_times(fn, device: str, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each timed run of fn()."""
    for _ in range(warmup):
        fn()
    if device != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return times
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.float32, device="cuda")  # larger than any L2
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    torch.cuda.synchronize()
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def spread(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median": round(statistics.median(ordered), 4), "p10": round(ordered[len(ordered) // 10], 4),
            "p90": round(ordered[(9 * len(ordered)) // 10], 4), "min": round(ordered[0], 4), "runs": len(ordered)}


def inputs(batch: int, seq: int, device: str, dtype: torch.dtype):
    return tuple(torch.randn(batch, seq, heads, HEAD_DIM, device=device, dtype=dtype) for heads in (N_Q, N_KV, N_KV))


def measure(batch: int, seq: int, device: str, dtype: torch.dtype, rope: Rope, args) -> dict:
    q, k, v = inputs(batch, seq, device, dtype)
    row = {"reference_ms": spread(run_times(lambda: reference_prefill(q, k, v, rope, HEAD_DIM**-0.5), device,
                                            args.repeats, args.warmup))}
    reasons = kernel_support(q, k)
    if reasons:
        row["kernel"] = "not run: " + "; ".join(reasons)
        return row
    got = prefill_attention(q, k, v, rope, backend="triton")
    want = reference_prefill(q, k, v, rope, HEAD_DIM**-0.5)
    row["kernel_ms"] = spread(run_times(lambda: prefill_attention(q, k, v, rope, backend="triton"), device,
                                        args.repeats, args.warmup))
    row["max_abs_err_o"] = float((got.o.float() - want.o.float()).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1 up to 2,048 tokens, 50 runs")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if args.repeats < 50:
        parser.error("--repeats must be at least 50: a median of fewer runs is not a figure to report")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.quick:
        args.repeats, args.warmup = 50, 5
    sweep = [s for s in SWEEP if s <= 2048] if args.quick else list(SWEEP)
    shapes = [(1, s) for s in sweep] + ([] if args.quick else list(BATCHED))
    rope = Rope.plain(1e5, HEAD_DIM)
    where = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
             "heads": f"{N_Q}/{N_KV}", "head_dim": HEAD_DIM, "torch": torch.__version__}
    record = Record("attention")
    record.emit(header("attention", None, **where))
    floor = measure(1, 16, device, dtype, rope, args)
    record.emit({"bench": "attention", "part": "floor", "batch": 1, "seq": 16, **where, **floor})
    kernel_by_seq = {}
    for batch, seq in shapes:
        row = measure(batch, seq, device, dtype, rope, args)
        flops = 4 * batch * N_Q * seq * seq * HEAD_DIM / 2  # causal: half the QK^T and PV products
        ref = row["reference_ms"]["median"]
        row["reference_tflops"] = round(flops / ref / 1e9, 2)
        row["reference_above_floor_ms"] = round(ref - floor["reference_ms"]["median"], 4)
        if "kernel_ms" in row:
            kernel = row["kernel_ms"]["median"]
            row.update({"kernel_tflops": round(flops / kernel / 1e9, 2), "speedup": round(ref / kernel, 2),
                        "kernel_above_floor_ms": round(kernel - floor["kernel_ms"]["median"], 4)})
            if batch == 1:
                kernel_by_seq[seq] = kernel
        record.emit({"bench": "attention", "part": "shape", "batch": batch, "seq": seq, **where, **row})
    if kernel_by_seq:
        times = [kernel_by_seq[s] for s in sorted(kernel_by_seq)]
        falls = [s for s, a, b in zip(sorted(kernel_by_seq)[1:], times, times[1:]) if b < a]
        record.emit({"bench": "attention", "part": "sweep", "kernel_grows_with_work": not falls, "falls_at_seq": falls})
    if device == "cuda" and not args.quick:  # a GPU run is the figure; a CPU run only checks the code
        print(f"result record: {record.write()}")


if __name__ == "__main__":
    main()
