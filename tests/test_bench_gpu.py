"""bench/gpu.py runs its KV parts end to end on CPU (the GPU run of the same code is only
possible where a GPU is lent), and says "not measured" where no GPU is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def run_bench(*args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter is too slow at 2k tokens
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, check=True, env=env)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_kv_parts_run_on_a_tiny_llama3_shape_on_cpu() -> None:
    lines = run_bench("--device", "cpu", "--quick", "--parts", "ttft,codec")
    assert lines[0]["gpu"] == "none (smoke run on cpu)"
    (ttft,) = [line for line in lines if line.get("part") == "ttft"]
    assert ttft["llm_shape"] == "tiny-llama-3" and ttft["context_tokens"] == 2048
    assert ttft["same_top1"] and ttft["max_abs_logit_diff"] < 1e-2
    assert ttft["full_prefill_s"]["runs"] == ttft["with_blob_s"]["runs"] == 2
    codecs = {line["codec"]: line for line in lines if line.get("part") == "codec"}
    assert set(codecs) == {"fp16", "bf16", "int8", "int4"}
    assert codecs["fp16"]["max_abs_k_err"] < 1e-2 and codecs["int4"]["blob_bytes"] < codecs["fp16"]["blob_bytes"] / 3
    assert all(line["encode_gb_s"] > 0 and line["decode_gb_s"] > 0 for line in codecs.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the bench would measure instead")
def test_without_a_gpu_it_says_not_measured() -> None:
    (line,) = run_bench("--quick")
    assert line["result"] == "not measured: no GPU"
