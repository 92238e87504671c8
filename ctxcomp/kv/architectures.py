"""What differs between the decoder LLMs whose KV ctxcomp computes: one small adapter each.

A prefill (ctxcomp.kv.prefill) runs the model's own modules (embeddings, norms,
projections, MLPs) and only replaces attention. What differs between
architectures is how a layer forms its attention inputs and which layers
attend through a sliding window; each adapter says that and nothing else.
RoPE, scaled or not, is read from the model's own rotary module (`model_rope`),
so llama3, linear, yarn, dynamic and longrope scalings are the model's exactly.

An architecture without an adapter is refused with its name and the supported
ones, never approximated. Gemma 2/3 are refused: their attention soft-capping,
query scalar and alternating local layers are not reproduced by the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ctxcomp.errors import NotAvailable
from ctxcomp.kernels.attention import Rope

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel


class Llama:
    """Llama 1-3 (and Qwen2's and Mistral's layer structure): q/k/v projections, no norms on them."""

    name = "llama"

    def qkv(self, attn: nn.Module, x: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, S, H_q, D], k and v [B, S, H_kv, D], before RoPE."""
        shape = (*x.shape[:-1], -1, head_dim)
        return attn.q_proj(x).view(shape), attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)

    def sliding_windows(self, config: PretrainedConfig) -> list[int | None]:
        """Per layer, the window its attention is limited to (None: the whole context)."""
        return [None] * config.num_hidden_layers


class Mistral(Llama):
    """Mistral: Llama's layers, every one limited to `sliding_window` tokens when it is set."""

    name = "mistral"

    def sliding_windows(self, config: PretrainedConfig) -> list[int | None]:
        return [getattr(config, "sliding_window", None)] * config.num_hidden_layers


class Qwen2(Llama):
    """Qwen2/2.5: Llama's layers with q/k/v biases (inside the projections); sliding layers by layer_types."""

    name = "qwen2"

    def sliding_windows(self, config: PretrainedConfig) -> list[int | None]:
        types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        return [config.sliding_window if t == "sliding_attention" else None for t in types]


class Qwen3(Qwen2):
    """Qwen3: an RMSNorm over each head of q and of k, before RoPE."""

    name = "qwen3"

    def qkv(self, attn: nn.Module, x: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().qkv(attn, x, head_dim)
        return attn.q_norm(q), attn.k_norm(k), v


ADAPTERS: dict[str, Llama] = {a.name: a for a in (Llama(), Mistral(), Qwen2(), Qwen3())}


def adapter_for(config: PretrainedConfig) -> Llama:
    """The adapter for this model's architecture; NotAvailable naming it otherwise."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in ADAPTERS:
        raise NotAvailable(
            f"KV blobs are not available for architecture {model_type!r}: a prefill could not be made exact for it; "
            f"supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def check_context(config: PretrainedConfig, end_position: int) -> None:
    """NotAvailable when a sliding-window layer would cut the context (positions up to end_position)."""
    windows = [w for w in adapter_for(config).sliding_windows(config) if w is not None]
    if windows and end_position > min(windows):
        raise NotAvailable(
            f"the context reaches position {end_position}, past the model's sliding window of {min(windows)} tokens; "
            "ctxcomp's prefill computes full attention, so it only serves contexts within the window"
        )


def rope_theta_of(config: PretrainedConfig) -> float:
    """The RoPE base the config names (for a blob's metadata; the exact RoPE is `model_rope`'s)."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def model_rope(model: PreTrainedModel, start_pos: int, seq: int) -> Rope:
    """The RoPE the model itself uses for positions start_pos..start_pos+seq-1: its rotary
    module is asked for them (which applies dynamic scaling updates as its own forward
    would), then its frequencies and attention scaling are read back."""
    rotary = model.model.rotary_emb
    positions = torch.arange(start_pos, start_pos + seq, device=rotary.inv_freq.device)[None]
    rotary(torch.zeros(1, dtype=torch.float32, device=rotary.inv_freq.device), positions)
    return Rope(rotary.inv_freq.detach().float().clone(), float(rotary.attention_scaling), start_pos)
