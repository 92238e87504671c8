"""The "transform" KV codec: entropy coder, its tables, the calibrated transform, refusals, quality."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctxcomp import models
from ctxcomp.errors import InvalidRequest
from ctxcomp.kv import blob
from ctxcomp.kv import transform as kv_transform
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kernels.attention import Rope
from ctxcomp.kv.prefill import prefill
from ctxcomp.models import kv_transform as transform_files


def test_entropy_coder_round_trip_with_zero_rows_outliers_and_both_families() -> None:
    rng = np.random.default_rng(0)
    length = 300
    spiky = np.round(rng.normal(size=length) * 2).astype(np.int32)
    spiky[[5, 9]] = [100_000, -70_000]  # beyond any table: escapes
    codes = np.stack([
        np.zeros(length, np.int32),
        np.round(rng.laplace(size=length) * 3).astype(np.int32),
        np.round(rng.normal(size=length) * 50).astype(np.int32),
        np.round(rng.normal(size=length) * 0.3).astype(np.int32),
        spiky,
    ])
    coded = kv_transform.entropy_encode(codes)
    assert coded.families.tolist() == [kv_transform.ZERO, kv_transform.LAPLACE, kv_transform.GAUSSIAN, kv_transform.LAPLACE, kv_transform.GAUSSIAN]
    assert sorted(coded.escapes.tolist()) == [-70_000, 100_000]
    assert (kv_transform.entropy_decode(coded, length) == codes).all()
    # The zero row costs nothing; the rest is well under the 32 bits of raw int32.
    assert coded.words.nbytes * 8 / codes[1:].size < 5


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.int32, st.tuples(st.integers(1, 6), st.integers(0, 40)), elements=st.integers(-(2**20), 2**20)))
def test_entropy_coder_round_trips_any_codes(codes) -> None:
    coded = kv_transform.entropy_encode(codes)
    assert (kv_transform.entropy_decode(coded, codes.shape[1]) == codes).all()


def test_model_tables_are_bit_identical_everywhere() -> None:
    """The decoder rebuilds the encoder's tables from fp16 scales; any drift (another numpy, CPU
    or libm) would make blobs undecodable elsewhere, so the exact bytes are pinned."""
    digest = hashlib.sha256()
    for family in (kv_transform.LAPLACE, kv_transform.GAUSSIAN):
        for scale in (0.05, 0.7, 3.2, 47.5, 1234.0):
            width, probs = kv_transform._table(family, float(np.float16(scale)))
            digest.update(np.int64(width).tobytes())
            digest.update(probs.tobytes())
    assert digest.hexdigest() == "fdc836bf44b78117966d542a499e272bc79eb62bfde3fe96b504340785ab36dd"


def test_pre_and_post_rope_are_inverse() -> None:
    k = torch.randn(2, 3, 40, 64)
    plain = Rope.plain(1e5, 64, start_pos=17)
    for rope in (plain, Rope(plain.inv_freq / 3, attention_scaling=1.3, start_pos=17)):
        back = kv_transform.to_post_rope(kv_transform.to_pre_rope(k, rope), rope)
        assert torch.allclose(back, k, atol=1e-5)


@pytest.fixture(scope="module")
def llm():
    return models.load_llm()


@pytest.fixture(scope="module")
def transform():
    return models.load_kv_transform()


def test_shipped_transform_is_for_the_shipped_llm(llm, transform) -> None:
    assert transform.llm_fingerprint == llm.fingerprint
    assert transform.layers == llm.model.config.num_hidden_layers
    assert torch.allclose(transform.key_matrix @ transform.key_inverse, torch.eye(transform.channels), atol=1e-3)


@torch.inference_mode()
def test_transform_blob_is_small_and_keeps_the_next_token(llm, transform, squad_held_out) -> None:
    """On held-out SQuAD paragraphs: 4x smaller than fp16 K/V and the same next token as a full prefill."""
    tok = llm.tokenizer
    for para in squad_held_out[10:13]:
        ids = tok(para.context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        result = prefill(llm.model, ids, backend="reference")
        data = blob_from_prefill(result, llm, ids[0].tolist(), codec="transform")
        meta = blob.inspect(data)
        assert meta.codec == "transform" and meta.k_rope == "pre" and meta.transform_sha256 == transform.digest
        raw_fp16 = sum(k.numel() + v.numel() for k, v in zip(result.keys, result.values)) * 2
        assert raw_fp16 / len(data) > 3.5
        qids = tok(f"\nQuestion: {para.questions[0].text}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
        want = llm.model(torch.cat([ids, qids], 1)).logits[0, -1]
        cache, _ = cache_from_blob(data, llm)
        positions = torch.arange(ids.shape[1], ids.shape[1] + qids.shape[1])[None]
        got = llm.model(qids, past_key_values=cache, position_ids=positions).logits[0, -1]
        assert got.argmax() == want.argmax()
        assert (got - want).abs().max() < 0.6  # int4 on the same paragraphs: ~1.3


def test_transform_blob_is_refused_without_its_transform(transform) -> None:
    g = torch.Generator().manual_seed(0)
    layers, heads, tokens, dim = transform.layers, transform.channels // 64, 20, 64
    keys = [torch.randn(1, heads, tokens, dim, generator=g) for _ in range(layers)]
    meta = blob.BlobMeta("fp", "m", layers, heads, dim, tokens, blob.token_ids_digest(range(tokens)), 0, 1e5)
    data = blob.encode(keys, keys, meta, codec="transform", transform=transform)
    k, _, _ = blob.decode(data, expect_fingerprint="fp", transform=transform)
    assert k.shape == (layers, heads, tokens, dim)
    with pytest.raises(blob.BlobRefused, match="needs KV transform"):
        blob.decode(data, expect_fingerprint="fp")
    other = dataclasses.replace(transform, digest="0" * 64)
    with pytest.raises(blob.BlobRefused, match="not with this one"):
        blob.decode(data, expect_fingerprint="fp", transform=other)
    with pytest.raises(ValueError, match="needs the model's KvTransform"):
        blob.encode(keys, keys, meta, codec="transform")


def test_transform_codec_is_refused_for_an_llm_it_was_not_calibrated_for(hub, tmp_path) -> None:
    from ctxcomp.hub import ModelHub
    from ctxcomp.kv.stage import check_kv_request

    folder = tmp_path / "kv_transform"
    shutil.copytree(transform_files.TRANSFORM_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "llm_fingerprint": "another-model"}))
    # The hub's override reaches the codec (it used to be ignored: the KV code loaded the default itself).
    with pytest.raises(InvalidRequest) as err:
        check_kv_request("transform", "", ModelHub({"kv_transform": str(folder)}))
    assert err.value.field == "kv_codec" and "calibrate_kv_transform" in str(err.value)
    assert check_kv_request("transform", "", hub) == "transform"


def test_calibration_script_builds_a_working_transform(llm, tmp_path, squad_held_out) -> None:
    out = tmp_path / "calibrated"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU: the plain PyTorch prefill
    subprocess.run([sys.executable, "-m", "ctxcomp.models.training.calibrate_kv_transform", "--tiny", "--out", str(out)], check=True, timeout=300, env=env)
    made = transform_files.load(out)
    assert made.llm_fingerprint == llm.fingerprint and made.meta["paragraphs"] == 3
    ids = llm.tokenizer(squad_held_out[0].context, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :64]
    result = prefill(llm.model, ids, backend="reference")
    meta = blob.BlobMeta(llm.fingerprint, "m", len(result.keys), result.keys[0].shape[1], 64, ids.shape[1], "x", 0, 0.0,
                         **blob.rope_fields(result.rope))
    data = blob.encode(result.keys, result.values, meta, codec="transform", transform=made)
    _, v, _ = blob.decode(data, expect_fingerprint=llm.fingerprint, transform=made)
    want_v = torch.stack([t[0] for t in result.values])

    # A tiny calibration gives a poor basis, but the codec must still round within half a step
    # in the transform's space (sinks left out: they are stored exactly).
    got = kv_transform.transformed(v[:, :, 4:], made.value_matrix, made.value_offset)
    want = kv_transform.transformed(want_v[:, :, 4:], made.value_matrix, made.value_offset)
    assert (got - want).abs().max() <= made.step * 0.5 * 1.01
    assert torch.equal(v[:, :, :4], want_v[:, :, :4].half().float())  # sinks: exact (fp16)
