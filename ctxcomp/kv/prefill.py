"""Prefill of a decoder LLM through ctxcomp's fused attention, emitting per-layer K/V.

The layer loop is the model's own (its norms, projections and MLPs are called as
modules); what differs between architectures (Llama, Mistral, Qwen2, Qwen3) is
one adapter each in ctxcomp.kv.architectures, and any other architecture is
refused. Attention goes through ctxcomp.kernels.attention, which applies the
model's RoPE (scaled or not) and returns K (after RoPE) and V in the cache
layout [B, H_kv, S, D].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from ctxcomp.cancellation import checkpoint
from ctxcomp.kernels.attention import Backend, Rope, apply_rope, prefill_attention
from ctxcomp.kv.architectures import adapter_for, check_context, head_dim_of, model_rope

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel


ATTENTION_QUERIES = 64  # queries per layer that estimate the attention each token receives (received_attention)


@dataclass(frozen=True)
class PrefillResult:
    keys: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D], after RoPE
    values: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D]
    last_logits: torch.Tensor  # [B, V] at the last position
    rope: Rope  # the RoPE K was rotated with (its start_pos is the context's first position)
    backend: str
    attention: torch.Tensor | None = None  # [S]: mean attention each token receives, batch row 0 (attention_queries > 0)

    @property
    def start_pos(self) -> int:
        return self.rope.start_pos


@torch.inference_mode()
def prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, *, start_pos: int = 0, backend: Backend = "auto",
    past: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None, attention_queries: int = 0,
) -> PrefillResult:
    """Run input_ids [B, S] (positions start_pos..start_pos+S-1) through a supported causal LM.

    past: per layer (K after RoPE, V) [B, H_kv, start_pos, D] of the tokens before input_ids
    (a reused prefix): the new tokens attend to it, and only their own K/V come back.
    attention_queries > 0 (and no past): also estimate the attention each token receives, from
    that many evenly spaced queries per layer (`received_attention`), for KV codecs that spend
    bits by it."""
    if past is not None and (len(past) != len(model.model.layers) or past[0][0].shape[-2] != start_pos):
        raise ValueError("past must hold every layer's K/V for exactly the start_pos tokens before input_ids")
    config, inner = model.config, model.model
    adapter = adapter_for(config)
    batch, seq = input_ids.shape
    check_context(config, start_pos + seq)
    rope = model_rope(model, start_pos, seq)
    head_dim = head_dim_of(config)
    hidden = inner.embed_tokens(input_ids)  # [B, S, hidden]
    keys, values, used = [], [], "reference"
    received = torch.zeros(seq) if attention_queries > 0 and past is None else None
    for layer in inner.layers:
        checkpoint()
        attn = layer.self_attn
        q, k, v = adapter.qkv(attn, layer.input_layernorm(hidden), head_dim)  # [B, S, H, D]
        prefix = past[len(keys)] if past is not None else None
        out = prefill_attention(q, k, v, rope, sm_scale=attn.scaling, backend=backend, past=prefix)
        hidden = hidden + attn.o_proj(out.o.reshape(batch, seq, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        keys.append(out.k)
        values.append(out.v)
        used = out.backend
        if received is not None:
            received += received_attention(q[0], out.k[0], rope, attn.scaling, attention_queries).cpu()
    logits = model.lm_head(inner.norm(hidden[:, -1:]))[:, -1]
    attention = received / len(keys) if received is not None else None
    return PrefillResult(tuple(keys), tuple(values), logits.float(), rope, used, attention)


def received_attention(q: torch.Tensor, k: torch.Tensor, rope: Rope, sm_scale: float, queries: int) -> torch.Tensor:
    """q [S, H_q, D] before RoPE, k [H_kv, S, D] after RoPE -> [S]: the attention each token receives,
    averaged over heads and over the sampled queries that can see it (up to `queries` evenly
    spaced positions; causal). A cheap estimate of what later text, such as a question, attends to."""
    seq, q_heads, _ = q.shape
    positions = torch.linspace(0, seq - 1, min(queries, seq)).round().long().unique()
    cos, sin = rope.tables(seq, q.device)
    sampled = apply_rope(q[positions].transpose(0, 1)[None].float(), cos[positions], sin[positions])[0]  # [H_q, n, D]
    keys = k.float().repeat_interleave(q_heads // k.shape[0], dim=0)  # [H_q, S, D]
    scores = torch.matmul(sampled, keys.transpose(-1, -2)) * sm_scale  # [H_q, n, S]
    hidden = torch.arange(seq, device=q.device)[None, :] > positions.to(q.device)[:, None]
    probs = scores.masked_fill(hidden, float("-inf")).softmax(-1).mean(0)  # [n, S]
    seen_by = (~hidden).sum(0).clamp(min=1)
    return probs.sum(0) / seen_by


def to_dynamic_cache(result: PrefillResult) -> DynamicCache:
    """A transformers DynamicCache holding the prefilled K/V, ready for generate()/forward()."""
    return dynamic_cache(result.keys, result.values)


def dynamic_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> DynamicCache:
    """A transformers DynamicCache of per-layer K (after RoPE) and V, each [B, H_kv, S, D]."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, layer)
    return cache
