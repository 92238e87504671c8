"""The Triton prefill kernel against the PyTorch reference.

On machines without CUDA the kernel runs in Triton's interpreter
(TRITON_INTERPRET=1, set by conftest), so CI exercises the kernel code itself.
"""

from __future__ import annotations

import pytest
import torch

from ctxcomp.kernels.attention import Rope, kernel_support, prefill_attention, reference_prefill

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(batch, seq, n_q, n_kv, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, n_q, head_dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(batch, seq, n_kv, head_dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(batch, seq, n_kv, head_dim, generator=g).to(DEVICE, dtype)
    return q, k, v


@pytest.mark.parametrize(
    ("batch", "seq", "n_q", "n_kv", "head_dim", "start_pos", "theta"),
    [
        (1, 16, 9, 3, 64, 0, 1e5),  # SmolLM2's heads, one tile
        (2, 37, 9, 3, 64, 0, 1e5),  # ragged last tile
        (1, 50, 4, 4, 32, 0, 1e4),  # plain multi-head
        (1, 33, 8, 1, 64, 120, 1e5),  # multi-query, context placed at position 120
        (1, 24, 6, 2, 128, 7, 5e5),  # wider heads
    ],
)
def test_kernel_matches_reference_fp32(batch, seq, n_q, n_kv, head_dim, start_pos, theta) -> None:
    q, k, v = make(batch, seq, n_q, n_kv, head_dim, torch.float32)
    rope = Rope.plain(theta, head_dim, start_pos)
    got = prefill_attention(q, k, v, rope, backend="triton")
    want = reference_prefill(q, k, v, rope, head_dim**-0.5)
    assert got.backend == "triton"
    torch.testing.assert_close(got.o, want.o, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(got.k, want.k, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.v, want.v, atol=0, rtol=0)
    assert got.k.shape == (batch, n_kv, seq, head_dim) and got.o.shape == q.shape


def test_kernel_takes_the_models_scaled_rope() -> None:
    """Scaled frequencies (llama3-style: long wavelengths stretched) and a cos/sin factor (YaRN's)."""
    head_dim = 128
    inv_freq = Rope.plain(5e5, head_dim).inv_freq
    inv_freq = torch.where(torch.arange(head_dim // 2) > 40, inv_freq / 8, inv_freq)
    rope = Rope(inv_freq, attention_scaling=1.17, start_pos=300)
    q, k, v = make(1, 40, 8, 2, head_dim, torch.float32, seed=5)
    got = prefill_attention(q, k, v, rope, backend="triton")
    want = reference_prefill(q, k, v, rope, head_dim**-0.5)
    torch.testing.assert_close(got.o, want.o, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(got.k, want.k, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="frequencies"):
        prefill_attention(q, k, v, Rope.plain(5e5, 64), backend="reference")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference_half_precision(dtype) -> None:
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton's interpreter mis-computes bf16 dots (numpy has no bf16); this case runs on a GPU")
    q, k, v = make(1, 40, 9, 3, 64, dtype, seed=3)
    got = prefill_attention(q, k, v, Rope.plain(1e5, 64), backend="triton")
    want = reference_prefill(q.float(), k.float(), v.float(), Rope.plain(1e5, 64), 64**-0.5)
    torch.testing.assert_close(got.o.float(), want.o, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(got.k.float(), want.k, atol=3e-2, rtol=3e-2)


def test_kernel_reads_strided_projection_outputs() -> None:
    """q/k/v straight out of one fused qkv projection: views with gaps between heads."""
    qkv = torch.randn(1, 20, 9 + 3 + 3, 64).to(DEVICE)
    q, k, v = qkv[:, :, :9], qkv[:, :, 9:12], qkv[:, :, 12:]
    got = prefill_attention(q, k, v, Rope.plain(1e5, 64), backend="triton")
    want = reference_prefill(q, k, v, Rope.plain(1e5, 64), 64**-0.5)
    torch.testing.assert_close(got.o, want.o, atol=2e-4, rtol=2e-4)


def test_reference_rope_matches_transformers_llama() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from ctxcomp.kernels.attention import apply_rope, rope_cos_sin

    x = torch.randn(1, 3, 10, 64)
    cos, sin = rope_cos_sin(torch.arange(5, 15), Rope.plain(1e5, 64).inv_freq)
    ours = apply_rope(x, cos, sin)
    theirs, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])
    torch.testing.assert_close(ours, theirs)


def test_capability_check_explains_itself(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, _ = make(1, 4, 2, 2, 48, torch.float32)
    reasons = kernel_support(q.cpu(), k.cpu())
    assert any("not cuda" in r for r in reasons)
    assert any("head_dim 48" in r for r in reasons)
    # auto falls back to the reference rather than failing
    out = prefill_attention(q.cpu(), k.cpu(), k.cpu(), Rope.plain(1e4, 48), backend="auto")
    assert out.backend == "reference"
    with pytest.raises(RuntimeError, match="cannot run here"):
        prefill_attention(q.cpu(), k.cpu(), k.cpu(), Rope.plain(1e4, 48), backend="triton")


def test_shape_errors_are_clear() -> None:
    q, k, v = make(1, 8, 9, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="not a multiple"):
        prefill_attention(q, k, v, Rope.plain(1e4, 64))
    with pytest.raises(ValueError, match="disagree"):
        prefill_attention(q[:, :4], k, v, Rope.plain(1e4, 64))
