"""Fused causal prefill attention for Llama-family models, with RoPE inside.

One kernel does what a prefill layer's attention needs and nothing more:
rotary embedding of Q and K on load (rotate-half convention, as Llama/HF; the
cos/sin tables come from the host, computed once per prefill from the model's
own frequencies, so every RoPE scaling (llama3, linear, yarn, dynamic) is exact),
causal flash attention with online softmax (FlashAttention-2 style),
grouped-query attention (query head h reads KV head h // group), and a
write of the rotated K and of V straight into the KV-blob layout
[B, H_kv, S, D] ("BHSD"), so nothing is transposed or re-rotated afterwards.

`prefill_attention` is the thin wrapper: it checks shapes and dtypes, picks
the Triton kernel where it can run (a CUDA device, or the Triton interpreter
with TRITON_INTERPRET=1) and the PyTorch reference (SDPA) otherwise, and says
why through `kernel_support`.

Layouts: q [B, S, H_q, D], k and v [B, S, H_kv, D] ("BSHD", as the q/k/v
projections produce them); o [B, S, H_q, D]; k_out, v_out [B, H_kv, S, D].
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["auto", "triton", "reference"]
_LOG2E = 1.4426950408889634  # 1/ln(2): the kernel's softmax works in base 2 (exp2 is cheaper)


@dataclass(frozen=True, eq=False)
class Rope:
    """A model's rotary embedding: the inverse frequencies [D/2], with the model's RoPE
    scaling already applied (llama3, linear, yarn, dynamic...), and the factor its cos and
    sin carry (YaRN's attention scaling; 1 otherwise)."""

    inv_freq: torch.Tensor  # [D/2] float32
    attention_scaling: float = 1.0
    start_pos: int = 0  # position of the first token (non-zero for a context placed after others)

    @classmethod
    def plain(cls, theta: float, head_dim: int, start_pos: int = 0) -> "Rope":
        """Unscaled RoPE with base theta (Llama's frequencies)."""
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return cls(inv_freq, 1.0, start_pos)

    def tables(self, seq: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S, D] float32 for positions start_pos..start_pos+seq-1, scaled as the model's."""
        cos, sin = self.half_tables(seq, device)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def half_tables(self, seq: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S, D/2] float32 of `tables` (its two halves are equal), for in-place rotations."""
        positions = torch.arange(self.start_pos, self.start_pos + seq, device=device)
        cos, sin = half_angle_cos_sin(positions, self.inv_freq)
        return cos * self.attention_scaling, sin * self.attention_scaling


@dataclass(frozen=True)
class PrefillOutput:
    o: torch.Tensor  # [B, S, H_q, D]
    k: torch.Tensor  # [B, H_kv, S, D], after RoPE
    v: torch.Tensor  # [B, H_kv, S, D]
    backend: str


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def kernel_support(q: torch.Tensor, k: torch.Tensor) -> list[str]:
    """Reasons the Triton kernel cannot run on these inputs; empty when it can."""
    reasons = []
    if importlib.util.find_spec("triton") is None:
        reasons.append("triton is not installed")
    if q.device.type != "cuda" and not triton_interpreting():
        reasons.append(f"tensors are on {q.device.type}, not cuda (set TRITON_INTERPRET=1 to run the kernel on CPU)")
    head_dim = q.shape[-1]
    if head_dim & (head_dim - 1) or not 32 <= head_dim <= 256:
        reasons.append(f"head_dim {head_dim} is not a power of two in [32, 256] (tl.dot needs 16-wide halves)")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        reasons.append(f"dtype {q.dtype} is not fp16, bf16 or fp32")
    return reasons


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rope) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B,S,Hq,D], k and v [B,S,Hkv,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, sequence or head_dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} KV heads")
    if q.shape[3] % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {q.shape[3]}")
    if rope.inv_freq.shape != (q.shape[3] // 2,):
        raise ValueError(f"RoPE has {tuple(rope.inv_freq.shape)} frequencies; head_dim {q.shape[3]} needs {q.shape[3] // 2}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: Rope,
    *,
    sm_scale: float | None = None,
    backend: Backend = "auto",
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PrefillOutput:
    """Causal GQA attention with RoPE applied to q and k; see the module doc for layouts.

    past: K (after RoPE) and V [B, H_kv, P, D] of the P positions before rope.start_pos,
    attended to by every query (prefix reuse); the kernel has no prefix, so this runs the
    reference path (asking for "triton" with a prefix is refused)."""
    _check(q, k, v, rope)
    scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
    if past is not None:
        if backend == "triton":
            raise RuntimeError("the Triton kernel cannot attend to a reused prefix")
        return reference_prefill(q, k, v, rope, scale, past)
    if backend == "reference":
        return reference_prefill(q, k, v, rope, scale)
    reasons = kernel_support(q, k)
    if backend == "triton" and reasons:
        raise RuntimeError("the Triton kernel cannot run here: " + "; ".join(reasons))
    if reasons:
        return reference_prefill(q, k, v, rope, scale)
    from ctxcomp.kernels._triton_attention import triton_prefill

    return triton_prefill(q, k, v, rope, scale)


# --- PyTorch reference --------------------------------------------------------


def half_angle_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, D/2] in fp32 of the angles positions x inv_freq (HF's arithmetic); positions may be negative."""
    angles = positions.float()[:, None] * inv_freq.to(device=positions.device, dtype=torch.float)[None, :]  # [S, D/2]
    return angles.cos(), angles.sin()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, D] in fp32 of a pure rotation by `positions` (which may be negative), HF's
    layout (the half-dimension angles repeated twice)."""
    cos, sin = half_angle_cos_sin(positions, inv_freq)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D] rotated by cos/sin [S, D] (rotate-half convention), computed in fp32."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def reference_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rope, sm_scale: float,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PrefillOutput:
    """The same computation in plain PyTorch (torch SDPA), used on CPU and as the test oracle.
    With `past`, the queries also attend to that prefix (all of it: it comes before them)."""
    cos, sin = rope.tables(q.shape[1], q.device)
    qh = apply_rope(q.transpose(1, 2), cos, sin)  # [B, Hq, S, D]
    kh = apply_rope(k.transpose(1, 2), cos, sin)  # [B, Hkv, S, D]
    vh = v.transpose(1, 2).contiguous()
    gqa = q.shape[2] != k.shape[2]
    if past is None:
        o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=sm_scale, enable_gqa=gqa)
    else:
        prefix, seq = past[0].shape[-2], q.shape[1]
        allowed = torch.arange(prefix + seq, device=q.device)[None, :] <= prefix + torch.arange(seq, device=q.device)[:, None]
        keys, values = torch.cat((past[0].to(kh.dtype), kh), dim=2), torch.cat((past[1].to(vh.dtype), vh), dim=2)
        o = torch.nn.functional.scaled_dot_product_attention(qh, keys, values, attn_mask=allowed, scale=sm_scale, enable_gqa=gqa)
    return PrefillOutput(o.transpose(1, 2), kh.contiguous(), vh, "reference")
