"""Prefill of a Llama-family model through ctxcomp's fused attention, emitting per-layer K/V.

The layer loop is the model's own (its norms, projections and MLPs are
called as modules); only attention goes through ctxcomp.kernels.attention,
which applies RoPE itself and returns K (after RoPE) and V in the cache
layout [B, H_kv, S, D].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ctxcomp.cancellation import checkpoint
from ctxcomp.errors import NotAvailable
from ctxcomp.kernels.attention import Backend, RopeParams, prefill_attention


@dataclass(frozen=True)
class PrefillResult:
    keys: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D], after RoPE
    values: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D]
    last_logits: torch.Tensor  # [B, V] at the last position
    start_pos: int
    backend: str


def rope_params(config: Any, start_pos: int = 0) -> RopeParams:
    """RoPE base from a Llama config; scaled RoPE variants are not reproduced by the kernel."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = params.get("rope_type", "default") if params else (getattr(config, "rope_scaling", None) or {}).get("rope_type", "default")
    if scaling not in ("default", None):
        raise NotAvailable(f"rope_type {scaling!r} is not supported by the prefill kernel (only unscaled RoPE)")
    theta = params.get("rope_theta") if params else getattr(config, "rope_theta", 10000.0)
    return RopeParams(theta=float(theta), start_pos=start_pos)


@torch.inference_mode()
def prefill(model: Any, input_ids: torch.Tensor, *, start_pos: int = 0, backend: Backend = "auto") -> PrefillResult:
    """Run input_ids [B, S] (positions start_pos..start_pos+S-1) through a LlamaForCausalLM."""
    config = model.config
    inner = model.model
    rope = rope_params(config, start_pos)
    batch, seq = input_ids.shape
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden = inner.embed_tokens(input_ids)  # [B, S, hidden]
    keys, values, used = [], [], "reference"
    for layer in inner.layers:
        checkpoint()
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(batch, seq, -1, head_dim)  # [B, S, Hq, D]
        k = attn.k_proj(x).view(batch, seq, -1, head_dim)  # [B, S, Hkv, D]
        v = attn.v_proj(x).view(batch, seq, -1, head_dim)
        out = prefill_attention(q, k, v, rope, sm_scale=attn.scaling, backend=backend)
        hidden = hidden + attn.o_proj(out.o.reshape(batch, seq, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        keys.append(out.k)
        values.append(out.v)
        used = out.backend
    logits = model.lm_head(inner.norm(hidden[:, -1:]))[:, -1]
    return PrefillResult(tuple(keys), tuple(values), logits.float(), start_pos, used)


def to_dynamic_cache(result: PrefillResult) -> Any:
    """A transformers DynamicCache holding the prefilled K/V, ready for generate()/forward()."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(result.keys, result.values)):
        cache.update(k, v, layer)
    return cache
