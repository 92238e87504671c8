"""Fused prefill attention (Triton, RoPE inside, K/V written in blob layout)
against the PyTorch path it replaces: RoPE in PyTorch + torch SDPA (flash
backend on CUDA) + the K/V transpose into the blob layout.

    python bench/attention.py [--quick]

Needs a CUDA GPU for the kernel; on CPU it times the reference alone and says so.
Prints one JSON object per shape: milliseconds and TFLOP/s of both, and the
ratio reference_ms / kernel_ms (> 1: the kernel is faster).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctxcomp.kernels.attention import Rope, kernel_support, prefill_attention, reference_prefill


def timeit(fn, device: str) -> float:
    """Median milliseconds of fn()."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100))
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = [(1, 512), (1, 2048), (1, 4096)] if args.quick else [(1, 512), (1, 2048), (1, 4096), (1, 8192), (8, 2048), (32, 1024)]
    n_q, n_kv, head_dim = 9, 3, 64  # SmolLM2-135M
    rope = Rope.plain(1e5, head_dim)
    for batch, seq in shapes:
        q = torch.randn(batch, seq, n_q, head_dim, device=device, dtype=dtype)
        k = torch.randn(batch, seq, n_kv, head_dim, device=device, dtype=dtype)
        v = torch.randn(batch, seq, n_kv, head_dim, device=device, dtype=dtype)
        flops = 4 * batch * n_q * seq * seq * head_dim / 2  # causal: half the QK^T and PV products
        ref_ms = timeit(lambda: reference_prefill(q, k, v, rope, head_dim**-0.5), device)
        row = {"batch": batch, "seq": seq, "heads": f"{n_q}/{n_kv}", "head_dim": head_dim, "dtype": str(dtype),
               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "reference_ms": round(ref_ms, 4), "reference_tflops": round(flops / ref_ms / 1e9, 2)}
        reasons = kernel_support(q, k)
        if reasons:
            row["kernel"] = "not run: " + "; ".join(reasons)
        else:
            got = prefill_attention(q, k, v, rope, backend="triton")
            want = reference_prefill(q, k, v, rope, head_dim**-0.5)
            kernel_ms = timeit(lambda: prefill_attention(q, k, v, rope, backend="triton"), device)
            row.update({"kernel_ms": round(kernel_ms, 4), "kernel_tflops": round(flops / kernel_ms / 1e9, 2),
                        "speedup": round(ref_ms / kernel_ms, 2),
                        "max_abs_err_o": float((got.o.float() - want.o.float()).abs().max())})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
