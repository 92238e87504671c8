"""The Triton kernels behind ctxcomp.kernels.attention (imported only where Triton runs).

Two launches per layer:
  _rope_kv_to_blob  rotates K (RoPE) and copies V from the projection layout
                    [B, S, H_kv, D] into the blob layout [B, H_kv, S, D];
  _prefill_fwd      rotates its Q tile on load and runs causal flash attention
                    over the already-rotated K (so RoPE is computed once per K
                    element, not once per query block), GQA by head index.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ctxcomp.kernels.attention import _LOG2E, PrefillOutput, Rope


@triton.jit
def _rotate(x1, x2, COS, SIN, rows, ok, HALF: tl.constexpr):
    """Rotate-half RoPE on a tile split into halves x1, x2 [M, D/2], with the host's cos/sin
    tables [S, D/2] (the model's frequencies and scaling) read at rows [M]."""
    half = tl.arange(0, HALF)
    c = tl.load(COS + rows[:, None] * HALF + half[None, :], mask=ok, other=0.0)
    s = tl.load(SIN + rows[:, None] * HALF + half[None, :], mask=ok, other=0.0)
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def _rope_kv_to_blob(
    K, V, KO, VO, COS, SIN,
    s_kb, s_ks, s_kh, s_vb, s_vs, s_vh,
    s_kob, s_koh, s_kos, s_vob, s_voh, s_vos,
    seq_len, n_kv_heads,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):
    block = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_kv_heads
    h = bh % n_kv_heads
    rows = block * BLOCK + tl.arange(0, BLOCK)
    ok = rows[:, None] < seq_len
    half = tl.arange(0, HALF)
    k_base = K + b * s_kb + h * s_kh + rows[:, None] * s_ks
    k1 = tl.load(k_base + half[None, :], mask=ok, other=0.0).to(tl.float32)
    k2 = tl.load(k_base + HALF + half[None, :], mask=ok, other=0.0).to(tl.float32)
    k1, k2 = _rotate(k1, k2, COS, SIN, rows, ok, HALF)
    ko_base = KO + b * s_kob + h * s_koh + rows[:, None] * s_kos
    tl.store(ko_base + half[None, :], k1.to(KO.dtype.element_ty), mask=ok)
    tl.store(ko_base + HALF + half[None, :], k2.to(KO.dtype.element_ty), mask=ok)
    full = tl.arange(0, 2 * HALF)
    v_tile = tl.load(V + b * s_vb + h * s_vh + rows[:, None] * s_vs + full[None, :], mask=ok)
    tl.store(VO + b * s_vob + h * s_voh + rows[:, None] * s_vos + full[None, :], v_tile, mask=ok)


@triton.jit
def _attend(acc, l_i, m_i, q1, q2, k_ptrs, v_ptrs, rows, lo, hi, seq_len, s_kos,
            HALF: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax accumulation over key blocks [lo, hi); MASKED applies the causal/length mask."""
    half = tl.arange(0, HALF)
    full = tl.arange(0, 2 * HALF)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k1t = tl.load(k_ptrs + cols[None, :] * s_kos + half[:, None], mask=col_ok[None, :], other=0.0)  # [HALF, N]
        k2t = tl.load(k_ptrs + cols[None, :] * s_kos + HALF + half[:, None], mask=col_ok[None, :], other=0.0)
        s = tl.dot(q1, k1t, input_precision=DOT_PRECISION)
        s += tl.dot(q2, k2t, input_precision=DOT_PRECISION)
        if MASKED:
            s = tl.where((rows[:, None] >= cols[None, :]) & col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tile = tl.load(v_ptrs + cols[:, None] * s_kos + full[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


def _configs() -> list[triton.Config]:
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (128, 64, 4, 4), (64, 32, 4, 4), (128, 128, 8, 2)]
    ]


@triton.autotune(configs=_configs(), key=["seq_bucket", "HALF"])
@triton.jit
def _prefill_fwd(
    Q, KO, VO, O, COS, SIN,
    qk_scale,
    s_qb, s_qs, s_qh,
    s_kob, s_koh, s_kos,
    s_ob, s_os, s_oh,
    seq_len, seq_bucket, n_q_heads,
    GROUP: tl.constexpr, HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_q_heads
    h = bh % n_q_heads
    kv_h = h // GROUP  # grouped-query attention: GROUP query heads share one KV head

    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    half = tl.arange(0, HALF)
    q_base = Q + b * s_qb + h * s_qh + rows[:, None] * s_qs
    q1 = tl.load(q_base + half[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_base + HALF + half[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q1, q2 = _rotate(q1, q2, COS, SIN, rows, row_ok[:, None], HALF)
    # Scores in log2 units: q carries sm_scale / ln(2), so the softmax can use exp2.
    q1 = (q1 * qk_scale).to(KO.dtype.element_ty)
    q2 = (q2 * qk_scale).to(KO.dtype.element_ty)

    k_ptrs = KO + b * s_kob + kv_h * s_koh
    v_ptrs = VO + b * s_kob + kv_h * s_koh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, 2 * HALF], tl.float32)
    # Key blocks wholly below the diagonal need no mask; the rest do.
    diagonal = (block_m * BLOCK_M) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attend(acc, l_i, m_i, q1, q2, k_ptrs, v_ptrs, rows, 0, diagonal, seq_len, s_kos,
                            HALF, BLOCK_N, False, DOT_PRECISION)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q1, q2, k_ptrs, v_ptrs, rows, diagonal, (block_m + 1) * BLOCK_M,
                            seq_len, s_kos, HALF, BLOCK_N, True, DOT_PRECISION)
    acc = acc / l_i[:, None]
    full = tl.arange(0, 2 * HALF)
    o_ptr = O + b * s_ob + h * s_oh + rows[:, None] * s_os + full[None, :]
    tl.store(o_ptr, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


def triton_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rope, sm_scale: float) -> PrefillOutput:
    # The kernels address the head dimension with unit stride.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    batch, seq, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    o = torch.empty_like(q)
    k_out = torch.empty((batch, n_kv, seq, head_dim), dtype=k.dtype, device=k.device)
    v_out = torch.empty_like(k_out)
    cos, sin = rope.tables(seq, q.device)  # [S, D], the halves repeated: the kernels read [S, D/2]
    cos, sin = cos[:, : head_dim // 2].contiguous(), sin[:, : head_dim // 2].contiguous()
    rope_block = 16 if os.environ.get("TRITON_INTERPRET", "") == "1" else 64
    _rope_kv_to_blob[(triton.cdiv(seq, rope_block), batch * n_kv)](
        k, v, k_out, v_out, cos, sin,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        k_out.stride(0), k_out.stride(1), k_out.stride(2), v_out.stride(0), v_out.stride(1), v_out.stride(2),
        seq, n_kv, HALF=head_dim // 2, BLOCK=rope_block,
    )

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(seq, meta["BLOCK_M"]), batch * n_q)

    _prefill_fwd[grid](
        q, k_out, v_out, o, cos, sin,
        sm_scale * _LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k_out.stride(0), k_out.stride(1), k_out.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        seq, 1 << max(seq - 1, 0).bit_length(), n_q,
        GROUP=n_q // n_kv, HALF=head_dim // 2,
        # fp32 inputs get exact products (tf32 would cost ~1e-3 relative error).
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return PrefillOutput(o, k_out, v_out, "triton")
