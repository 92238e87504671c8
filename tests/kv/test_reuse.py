"""Non-prefix reuse: re-rotation, concatenation, CacheBlend recompute."""

from __future__ import annotations

import pytest
import torch

from ctxcomp.kernels.attention import Rope, apply_rope
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.reuse import blend, concatenate, rerotate


@pytest.mark.parametrize("scaled", [False, True])
def test_rerotation_equals_rotating_at_the_new_position(scaled) -> None:
    x = torch.randn(2, 9, 64)
    rope = Rope.plain(1e5, 64)
    if scaled:  # the model's scaled frequencies and cos/sin factor (YaRN-like)
        rope = Rope(torch.where(torch.arange(32) > 20, rope.inv_freq / 4, rope.inv_freq), attention_scaling=1.2)
    at = lambda start: apply_rope(x, *Rope(rope.inv_freq, rope.attention_scaling, start).tables(9))  # noqa: E731
    torch.testing.assert_close(rerotate(at(0), 37, rope), at(37), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def two_docs(llm, squad_held_out):
    tok = llm.tokenizer
    a = tok(squad_held_out[0].context[:300], return_tensors="pt", add_special_tokens=False)["input_ids"]
    b = tok(squad_held_out[7].context[:300], return_tensors="pt", add_special_tokens=False)["input_ids"]
    return a, b


def stack(result):
    return torch.stack([k[0] for k in result.keys]), torch.stack([v[0] for v in result.values])


@pytest.fixture(scope="module")
def reused(llm, two_docs):
    """Both documents prefilled apart and concatenated, and the full prefill of the pair."""
    a, b = two_docs
    both = torch.cat([a, b], 1)
    first = prefill(llm.model, a, backend="reference")
    ka, va = stack(first)
    kb, vb = stack(prefill(llm.model, b, backend="reference"))
    k_cat, v_cat = concatenate([(ka, va, 0), (kb, vb, 0)], first.rope)
    k_full, v_full = stack(prefill(llm.model, both, backend="reference"))
    return both, a.shape[1], k_cat, v_cat, k_full, v_full


def test_first_document_is_exact_and_full_recompute_matches_prefill(llm, reused) -> None:
    both, n, k_cat, v_cat, k_full, v_full = reused
    torch.testing.assert_close(k_cat[:, :, :n], k_full[:, :, :n], atol=1e-4, rtol=1e-4)  # prefix: identical
    # Layer 0 of the second document is context-free, so re-rotation alone makes it exact.
    torch.testing.assert_close(k_cat[0, :, n:], k_full[0, :, n:], atol=1e-3, rtol=1e-3)
    k_all, v_all = blend(llm.model, both, k_cat, v_cat, recompute_ratio=1.0)
    torch.testing.assert_close(k_all, k_full, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(v_all, v_full, atol=2e-3, rtol=2e-3)


def test_partial_recompute_moves_towards_full_prefill(llm, reused) -> None:
    both, _, k_cat, v_cat, _, v_full = reused
    error = lambda v: (v - v_full).norm().item()  # noqa: E731
    _, v_30 = blend(llm.model, both, k_cat, v_cat, recompute_ratio=0.3)
    assert error(v_30) < error(v_cat)
