"""Non-prefix reuse: per-document KV blobs concatenated for a new request.

Each document's K was stored after RoPE at its own positions. Placed at a new
offset, its keys are re-rotated by the offset (rotations compose: R(p+d) =
R(d) R(p)), as KVLink/APE do. What concatenation cannot restore is
cross-document attention: every document's K/V were computed without seeing
the ones before it. CacheBlend's remedy is `blend`: recompute the KV of the
tokens whose layer-1 values deviate most from a fresh computation, a
`recompute_ratio` share of them, through every layer, attending to the
reused KV of all other tokens.

Shapes: K, V [L, H_kv, S, D] (layout "LHSD"), batch 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ctxcomp.kernels.attention import Rope, apply_rope, rope_cos_sin
from ctxcomp.kv.architectures import adapter_for, check_context, head_dim_of, model_rope

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def rerotate(k: torch.Tensor, delta: int, rope: Rope) -> torch.Tensor:
    """Keys rotated for positions `delta` further on with the model's frequencies (a pure
    rotation: the cos/sin scaling K already carries stays). k: [..., S, D]; same shape back."""
    if delta == 0:
        return k
    cos, sin = rope_cos_sin(torch.tensor([delta], device=k.device), rope.inv_freq)  # [1, D], broadcast over S
    return apply_rope(k, cos, sin)


def concatenate(parts: Sequence[tuple[torch.Tensor, torch.Tensor, int]], rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V, start_pos) per document, in order -> one K, V for the documents back to back from position 0."""
    keys, values, offset = [], [], 0
    for k, v, start in parts:
        keys.append(rerotate(k, offset - start, rope))
        values.append(v)
        offset += k.shape[-2]
    return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)


@torch.inference_mode()
def blend(model: PreTrainedModel, input_ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, recompute_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CacheBlend-style selective recompute on concatenated K/V for input_ids [1, S].

    Layer 0 is recomputed for all tokens (its attention is what first mixes
    documents); the `recompute_ratio` share of tokens whose layer-1 values
    deviate most is then recomputed through the remaining layers.
    Returns new K, V [L, H_kv, S, D].
    """
    if not 0.0 <= recompute_ratio <= 1.0:
        raise ValueError(f"recompute_ratio must be in [0, 1], got {recompute_ratio}")
    keys, values = keys.clone(), values.clone()
    if recompute_ratio == 0.0:
        return keys, values
    config, inner = model.config, model.model
    adapter, head_dim = adapter_for(config), head_dim_of(config)
    seq = input_ids.shape[1]
    check_context(config, seq)  # full attention here too: a sliding-window layer would see less
    positions = torch.arange(seq, device=input_ids.device)
    cos, sin = model_rope(model, 0, seq).tables(seq, input_ids.device)
    hidden = inner.embed_tokens(input_ids)[0]  # [S, hidden]
    selected = positions  # layer 0: every token
    for index, layer in enumerate(inner.layers):
        attn = layer.self_attn
        q, k, v = (t.transpose(0, 1) for t in adapter.qkv(attn, layer.input_layernorm(hidden), head_dim))
        q = apply_rope(q, cos[selected], sin[selected])  # [H, S_sel, D]
        k = apply_rope(k, cos[selected], sin[selected])
        if index == 1:
            # Deviation of reused layer-1 values from fresh ones picks the tokens to keep recomputing.
            deviation = (v - values[1]).norm(dim=-1).sum(dim=0)  # [S]
            count = max(1, round(recompute_ratio * seq))
            selected = deviation.topk(count).indices.sort().values
            hidden, q, k, v = hidden[selected], q[:, selected], k[:, selected], v[:, selected]
        keys[index][:, selected] = k
        values[index][:, selected] = v
        mask = selected[:, None] >= positions[None, :]  # causal by original position: [S_sel, S]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, keys[index], values[index], attn_mask=mask, scale=attn.scaling, enable_gqa=True
        )  # [Hq, S_sel, D]
        hidden = hidden + attn.o_proj(out.transpose(0, 1).reshape(len(selected), -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return keys, values
