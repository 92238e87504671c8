"""The "headpca" KV codec: per-head bases, steps by attention, the attention estimate, refusals, quality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ctxcomp import models
from ctxcomp.kernels.attention import Rope
from ctxcomp.kv import blob, head_pca
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv.prefill import ATTENTION_QUERIES, prefill, received_attention
from tests.kv.next_token import next_token_logits


def test_shipped_bases_invert_and_are_ordered(transform) -> None:
    bases = transform.heads
    assert bases is not None and bases.key_matrix.shape == (30, 3, 64, 64)
    eye = torch.eye(64).expand(30, 3, 64, 64)
    assert torch.allclose(bases.key_matrix @ bases.key_inverse, eye, atol=1e-3)
    assert torch.allclose(bases.value_matrix @ bases.value_inverse, eye, atol=1e-3)
    assert (bases.key_std[..., :-1] >= bases.key_std[..., 1:] * 0.999).all()  # falling spread: a prefix is coded


def test_token_levels_give_heavier_tokens_finer_steps() -> None:
    assert not head_pca.token_levels(None, 5).any()
    levels = head_pca.token_levels(torch.tensor([0.5, 0.1, 0.1, 0.1, 1e-9]), 5)
    assert levels[0] < levels[1] == levels[2] == levels[3] < levels[4] == head_pca.LEVELS
    assert levels.dtype == np.int8


def test_coarser_steps_code_fewer_components(transform) -> None:
    flat = np.zeros(10, dtype=np.int8)
    fine, coarse = (head_pca.coded_components(transform.heads, step, flat) for step in (5e-4, 5e-3))
    assert (fine >= coarse).all() and fine.sum() > coarse.sum()
    # A finer level anywhere in the blob keeps the components that level needs.
    assert (head_pca.coded_components(transform.heads, 5e-3, np.array([0, -4], dtype=np.int8)) >= coarse).all()


def test_received_attention_with_every_query_is_the_models_attention(tiny_llama) -> None:
    """With as many sampled queries as tokens, the estimate is exactly the mean over heads and
    visible queries of the attention the model computes (eager attention, layer by layer)."""
    tiny = tiny_llama(64)
    model = tiny.model
    ids = torch.randint(0, 500, (1, 23), generator=torch.Generator().manual_seed(3))
    result = prefill(model, ids, attention_queries=23, backend="reference")
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            attentions = model(ids, output_attentions=True).attentions  # per layer [1, H_q, S, S]
    finally:
        model.set_attn_implementation("sdpa")
    per_layer = [a[0].mean(0).sum(0) / torch.arange(23, 0, -1) for a in attentions]
    assert torch.allclose(result.attention, torch.stack(per_layer).mean(0), atol=1e-5)
    # Fewer queries: an estimate, still a distribution-like weight per token.
    sampled = prefill(model, ids, attention_queries=5, backend="reference").attention
    assert sampled.shape == (23,) and (sampled >= 0).all()


def test_received_attention_is_causal() -> None:
    """One sampled query (the first position) sees only the first token: all its attention goes there."""
    q, k = torch.randn(6, 2, 8), torch.randn(1, 6, 8)
    weights = received_attention(q, k, Rope.plain(1e4, 8), 8**-0.5, 1)
    assert torch.equal(weights, torch.tensor([1.0, 0, 0, 0, 0, 0]))


@torch.inference_mode()
def test_headpca_blob_is_smaller_than_transform_and_keeps_the_next_token(llm, transform, squad_held_out) -> None:
    tok = llm.tokenizer
    for para in squad_held_out[10:13]:
        ids = tok(para.context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        result = prefill(llm.model, ids, backend="reference", attention_queries=ATTENTION_QUERIES)
        data = blob_from_prefill(result, llm, ids[0].tolist(), codec="headpca")
        meta = blob.inspect(data)
        assert meta.codec == "headpca" and meta.transform_sha256 == transform.heads.digest and meta.format_version == 5
        assert meta.sink_tokens == 4 and meta.quant_step == transform.heads.step
        raw_fp16 = sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
        assert raw_fp16 / len(data) > raw_fp16 / len(blob_from_prefill(result, llm, ids[0].tolist(), codec="transform"))
        want = next_token_logits(llm, ids, para.questions[0].text, None)
        got = next_token_logits(llm, ids, para.questions[0].text, data)
        assert got.argmax() == want.argmax()
        # Sinks exact (fp16), the rest within what the step allows in each head's basis.
        k, _, _ = blob.decode(data, expect_fingerprint=llm.fingerprint, transform=transform)
        assert torch.equal(k[:, :, :4], torch.stack([x[0] for x in result.keys])[:, :, :4].half().float())


def _blob(transform, tokens: int = 24, start_pos: int = 0, recent: int = 0, attention: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(tokens)
    layers, heads, dim = 30, 3, 64
    k = [torch.randn(1, heads, tokens, dim, generator=g) * 0.3 for _ in range(layers)]
    v = [torch.randn(1, heads, tokens, dim, generator=g) * 0.05 for _ in range(layers)]
    meta = blob.BlobMeta("fp", "m", layers, heads, dim, tokens, blob.token_ids_digest(range(tokens)), start_pos, 1e5,
                         recent_tokens=recent, **blob.rope_fields(Rope.plain(1e5, dim, start_pos)))
    return k, v, meta, blob.encode(k, v, meta, codec="headpca", transform=transform, attention=attention)


def test_sinks_and_recent_tokens_are_exact_and_the_rest_rounds_in_each_heads_basis(transform) -> None:
    k, v, meta, data = _blob(transform, tokens=24, recent=3, attention=torch.rand(24, generator=torch.Generator().manual_seed(0)))
    got_k, got_v, stored = blob.decode(data, expect_fingerprint="fp", transform=transform)
    want_k, want_v = torch.stack([x[0] for x in k]), torch.stack([x[0] for x in v])
    assert stored.sink_tokens == 4 and stored.recent_tokens == 3
    for got, want in ((got_k, want_k), (got_v, want_v)):
        assert torch.equal(got[:, :, :4], want[:, :, :4].half().float())
        assert torch.equal(got[:, :, -3:], want[:, :, -3:].half().float())
    # Values: each coded coefficient within half its token's step (components not coded: their own spread).
    tensors = st_load(data)
    steps = torch.tensor(transform.heads.step * 2.0 ** (tensors["token_levels"].float() / 2))
    bases = transform.heads
    coefficient = lambda x: torch.einsum("lhsd,lhdj->lhjs", x[:, :, 4:-3], bases.value_matrix) - bases.value_offset[..., None]  # noqa: E731
    error = (coefficient(got_v) - coefficient(want_v)).abs() / steps
    coded = tensors["components"][1].long()
    for layer in range(30):
        for head in range(3):
            assert error[layer, head, : coded[layer, head]].max() <= 0.5 + 1e-3


def test_headpca_needs_its_bases(transform) -> None:
    k, v, meta, data = _blob(transform)
    without = dataclasses.replace(transform, heads=None)
    with pytest.raises(ValueError, match="per-head bases"):
        blob.encode(k, v, meta, codec="headpca", transform=without)
    with pytest.raises(blob.BlobRefused, match="per-head bases"):
        blob.decode(data, expect_fingerprint="fp", transform=without)
    other = dataclasses.replace(transform, heads=dataclasses.replace(transform.heads, digest="0" * 64))
    with pytest.raises(blob.BlobRefused, match="not with these"):
        blob.decode(data, expect_fingerprint="fp", transform=other)


def _resigned(data: bytes, tensors: dict[str, torch.Tensor]) -> bytes:
    """The blob with other tensors and a valid checksum over them: only the codec's own checks can refuse it."""
    size = int.from_bytes(data[:8], "little")
    import json

    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    return st_save(tensors, metadata={**metadata, "checksum_sha256": blob._checksum(tensors)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_corrupt_headpca_blob_is_refused_never_a_crash(transform, data) -> None:
    """Any tensor of the payload altered (and the checksum made to match, so the codec's own checks
    must catch it): decoding refuses the blob, or decodes to finite tensors of the blob's shape."""
    _, _, meta, encoded = _blob(transform, tokens=12)
    tensors = {name: tensor.clone() for name, tensor in st_load(encoded).items()}
    name = data.draw(st.sampled_from(sorted(n for n, t in tensors.items() if t.numel())))
    flat = tensors[name].view(-1).view(torch.uint8) if tensors[name].dtype != torch.uint8 else tensors[name].view(-1)
    index = data.draw(st.integers(0, flat.numel() - 1))
    flat[index] = data.draw(st.integers(0, 255).filter(lambda b: b != int(flat[index])))
    if data.draw(st.booleans()):  # or a truncated tensor
        tensors[name] = tensors[name].view(-1)[: data.draw(st.integers(0, tensors[name].numel() - 1))].clone()
    try:
        k, v, _ = blob.decode(_resigned(encoded, tensors), expect_fingerprint="fp", transform=transform)
    except blob.BlobRefused:
        return
    assert k.shape == v.shape == (meta.layers, meta.kv_heads, meta.tokens, meta.head_dim)


def test_a_flipped_byte_anywhere_is_refused(transform) -> None:
    _, _, _, encoded = _blob(transform, tokens=12)
    for position in range(8, len(encoded), max(1, len(encoded) // 40)):
        corrupt = bytearray(encoded)
        corrupt[position] ^= 0x5A
        with pytest.raises(blob.BlobRefused):
            blob.decode(bytes(corrupt), expect_fingerprint="fp", transform=transform)
