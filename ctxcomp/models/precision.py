"""Encoder precision: fp32, bf16 or int8 copies of a loaded encoder, in torch or compiled by
OpenVINO, and "auto", which times them.

Which is fastest depends on the CPU, not on its flags alone: bf16 is twice as fast as fp32
where AMX runs it and slower where only AVX512-BF16 does, int8 (ctxcomp/models/int8.py) wins where
VNNI is all there is, and OpenVINO (ctxcomp/models/openvino_encoder.py, when the package is
installed) saves torch's per-op cost at the pipeline's small shapes. So "auto" runs each
form on one synthetic batch of the actual model on the actual machine at load and keeps the
fastest.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import typing
from typing import Any, Callable, Literal

import torch

from ctxcomp.models import int8

# The one list of encoder precisions: request options (llmlingua2's `precision`), the CLI
# and the hub all take their choices from it.
Precision = Literal["auto", "fp32", "bf16", "int8", "openvino-fp32", "openvino-int8"]
CHOICES: tuple[str, ...] = typing.get_args(Precision)
PRECISIONS = CHOICES[1:]
PROBE_ROWS, PROBE_TOKENS = 4, 256  # a typical encoder batch of the pipeline (length-sorted windows)


def check(precision: str) -> str:
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r}: use {', '.join(CHOICES)}")
    return precision


def convert(loaded: Any, precision: str) -> Any:
    """A copy of a loaded fp32 encoder in `precision` (the original is untouched). A wrapper
    with a `.model` (TokenClassifier, RelevanceScorer) gets a converted model; a torch module
    (a SentenceTransformer) is converted whole."""
    if precision == "fp32":
        return loaded
    module = loaded.model if dataclasses.is_dataclass(loaded) else loaded
    if precision == "bf16":
        converted = copy.deepcopy(module).to(torch.bfloat16).eval()
    elif precision == "int8":
        converted = int8.quantize(module)
    elif precision in ("openvino-fp32", "openvino-int8"):
        from ctxcomp.models import openvino_encoder

        int8_form = precision == "openvino-int8"
        converted = openvino_encoder.convert(module, int8_form, getattr(loaded, "tokenizer", None) if int8_form else None)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return dataclasses.replace(loaded, model=converted) if dataclasses.is_dataclass(loaded) else converted


def probe_ids(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, token_type_ids) [PROBE_ROWS, PROBE_TOKENS] of a fixed seed."""
    ids = torch.randint(1000, vocab_size, (PROBE_ROWS, PROBE_TOKENS), generator=torch.Generator().manual_seed(0))
    types = torch.zeros_like(ids)
    types[:, 32:] = 1  # a query, then a document window, as the cross-encoder sees them
    return ids, torch.ones_like(ids), types


def timed_ms(run: Callable[[], Any], repeats: int = 3) -> float:
    """Best of `repeats` after one warm-up call (first calls build oneDNN primitives)."""
    with torch.inference_mode():
        run()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
    return best * 1000.0


def fastest(timings_ms: dict[str, float]) -> str:
    """The precision with the lowest time; fp32 when within 5% of it (the reference costs nothing to trust)."""
    best = min(timings_ms, key=timings_ms.__getitem__)
    return "fp32" if "fp32" in timings_ms and timings_ms["fp32"] <= timings_ms[best] * 1.05 else best
