"""int8 encoders for CPU: every transformer projection as a W8A8 linear with int32 accumulation.

Weights are quantized once per output channel (symmetric, absmax / 127); activations per row,
i.e. per token, when the layer runs; the product is torch._int_mm (VNNI, or AMX-INT8 where
oneDNN finds it) and is scaled back to float. A row's output depends on that row alone, so a
request's scores never depend on the batch it was padded into, unlike per-tensor dynamic
quantization (torch.ao's quantize_dynamic, also deprecated). Heads, norms, embeddings and
the attention products stay float32.

Quantizing and scaling back are elementwise passes that cost as much as the int8 product
itself when run op by op, so both are compiled once (torch.compile, dynamic shapes: one
kernel each for every batch shape) into single fused loops; where compiling fails (no C++
compiler), they run op by op and int8 is simply not the fastest form for "auto".
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Callable

import torch
from torch import nn

MIN_FEATURES = 64  # projections inside transformer blocks; a head (out 1 or 2) stays float


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] float -> ([M, K] int8, [M, 1] scale): symmetric per row."""
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(rows / scale).to(torch.int8), scale


def quantize_channels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> ([N, K] int8, [N] scale): symmetric per output channel."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(weight / scale.unsqueeze(1)).to(torch.int8), scale


def scale_back(acc: torch.Tensor, row_scale: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[M, N] int32 products -> float, plus the bias."""
    return acc.float() * row_scale * weight_scale + bias


_fused: dict[str, Callable] = {}
_compiling = threading.Lock()  # Dynamo's first trace is not thread-safe


def _kernel(name: str, eager: Callable) -> Callable:
    """`eager` compiled into one fused loop on first use; `eager` itself if that fails."""
    if name not in _fused:
        compiled = torch.compile(eager, dynamic=True)

        def first_call(*args: torch.Tensor) -> torch.Tensor:
            with _compiling:
                if _fused[name] is not first_call:  # another thread finished first
                    return _fused[name](*args)
                try:
                    result = compiled(*args)
                    _fused[name] = compiled
                except Exception as err:  # noqa: BLE001 - any compiler failure means: run op by op
                    logging.getLogger("ctxcomp.models").warning("int8 %s runs op by op (compiling failed: %s)", name, err)
                    _fused[name] = eager
                    result = eager(*args)
                return result

        _fused[name] = first_call
    return _fused[name]


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights [K, N] (per output channel scale) and per-row int8 inputs."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        codes, scale = quantize_channels(linear.weight.detach().float())  # [N, K]
        self.register_buffer("weight_t", codes.t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized, row_scale = _kernel("quantize_rows", quantize_rows)(x.reshape(-1, self.in_features).float())
        out = _kernel("scale_back", scale_back)(torch._int_mm(quantized, self.weight_t), row_scale, self.weight_scale, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


def replace_projections(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A float32 copy of `module` with every large nn.Linear (the projections inside transformer
    blocks; heads stay) replaced by make(linear)."""
    copied = copy.deepcopy(module).float().eval()
    targets = [
        (name, child) for name, child in copied.named_modules()
        if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= MIN_FEATURES
    ]
    for name, linear in targets:
        parent_name, _, attribute = name.rpartition(".")
        setattr(copied.get_submodule(parent_name) if parent_name else copied, attribute, make(linear))
    return copied


def quantize(module: nn.Module) -> nn.Module:
    """A copy of `module` (float32, CPU) with every large nn.Linear as an Int8Linear."""
    return replace_projections(module, Int8Linear)
