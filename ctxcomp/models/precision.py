"""Encoder precision: fp32, bf16 or int8 copies of a loaded encoder, in torch or compiled by
OpenVINO, and "auto", which times them.

Which is fastest depends on the CPU, not on its flags alone: bf16 is twice as fast as fp32
where AMX runs it and slower where only AVX512-BF16 does, int8 (ctxcomp/models/int8.py) wins where
VNNI is all there is, and OpenVINO (ctxcomp/models/openvino_encoder.py, when the package is
installed) saves torch's per-op cost at the pipeline's small shapes. So "auto" times each
form of the actual model on the actual machine at load, and keeps the fastest (`choose`).

One probe shape and one timing made that a coin flip between forms a few percent apart,
which then ran real requests up to 2x apart. So the probe looks like serving: a lone short
request and a full batch (PROBE_SHAPES), timed in interleaved rounds (ROUNDS, the median of
each), and forms within TIE_MARGIN of the best are a tie that the batch shape decides, with a
fixed order for what is within noise there too. A deployment that wants no probe at all
pins the form (`--precision`, CTXCOMP_PRECISION).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
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
PROBE_SHAPES = ((1, 128), (8, 256))  # (rows, tokens): a lone short request, a batch under load
ROUNDS = 3
TIE_MARGIN = 0.10  # forms whose probe total is within this of the best are a tie ...
NOISE_MARGIN = 0.05  # ... decided at the batch shape, unless within this there too: then by PREFERENCE
# Among forms that time alike: the exact reference first, then what keeps fp32's numbers.
PREFERENCE = ("fp32", "openvino-fp32", "bf16", "int8", "openvino-int8")


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


def probe_ids(vocab_size: int, rows: int = PROBE_ROWS, tokens: int = PROBE_TOKENS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, token_type_ids) [rows, tokens] of a fixed seed."""
    ids = torch.randint(1000, vocab_size, (rows, tokens), generator=torch.Generator().manual_seed(0))
    types = torch.zeros_like(ids)
    types[:, 32:] = 1  # a query, then a document window, as the cross-encoder sees them
    return ids, torch.ones_like(ids), types


def timed_rounds(runs: dict[str, list[Callable[[], Any]]], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Median milliseconds of each form's run at each probe shape. Every run is warmed up once
    (first calls build oneDNN primitives), then the forms take turns, round by round, so a
    slow moment of the machine falls on all of them alike."""
    times: dict[str, list[list[float]]] = {form: [[] for _ in shapes] for form, shapes in runs.items()}
    with torch.inference_mode():
        for shapes in runs.values():
            for run in shapes:
                run()
        for _ in range(rounds):
            for form, shapes in runs.items():
                for s, run in enumerate(shapes):
                    started = time.perf_counter()
                    run()
                    times[form][s].append((time.perf_counter() - started) * 1000.0)
    return {form: [statistics.median(t) for t in per_shape] for form, per_shape in times.items()}


def choose(medians_ms: dict[str, list[float]]) -> str:
    """The form to run, from each form's median ms at each probe shape (batch shape last).

    Each form's total is its times relative to fp32's, shape by shape (every shape weighs
    alike). fp32 within NOISE_MARGIN of the best total is kept (the reference costs nothing to
    trust); otherwise the forms within TIE_MARGIN of the best are a tie, won by the fastest at
    the batch shape, and forms within NOISE_MARGIN there too go by PREFERENCE."""
    base = medians_ms.get("fp32") or next(iter(medians_ms.values()))
    totals = {form: sum(t / b for t, b in zip(times, base)) for form, times in medians_ms.items()}
    best = min(totals.values())
    if "fp32" in totals and totals["fp32"] <= best * (1 + NOISE_MARGIN):
        return "fp32"
    tied = [form for form, total in totals.items() if total <= best * (1 + TIE_MARGIN)]
    fastest_batch = min(medians_ms[form][-1] for form in tied)
    close = [form for form in tied if medians_ms[form][-1] <= fastest_batch * (1 + NOISE_MARGIN)]
    return min(close, key=lambda form: PREFERENCE.index(form) if form in PREFERENCE else len(PREFERENCE))
