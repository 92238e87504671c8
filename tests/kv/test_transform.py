"""The "transform" KV codec: entropy coder (rANS), its tables, the calibrated transform, refusals, quality."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctxcomp import models
from ctxcomp.errors import InvalidRequest
from ctxcomp.kv import blob
from ctxcomp.kv import rans, transform_tables
from ctxcomp.kv import transform as kv_transform
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kernels.attention import Rope
from ctxcomp.kv.prefill import prefill
from ctxcomp.models import kv_transform as transform_files
from tests.kv.next_token import next_token_logits

CHECKOUT = Path(__file__).resolve().parents[2]  # training/ runs from the checkout root


def _chunked(rows: np.ndarray, chunks: int) -> np.ndarray:
    """rows [N, S] -> codes [chunks, N / chunks, S], entropy_encode's layout (rows chunk-major)."""
    return rows.reshape(chunks, -1, rows.shape[1])


@pytest.mark.parametrize("interleaved", [False, True], ids=["one state", "two interleaved states"])
def test_entropy_coder_round_trip_with_zero_rows_outliers_wide_rows_and_both_families(interleaved) -> None:
    rng = np.random.default_rng(0)
    length = 300
    spiky = np.round(rng.normal(size=length) * 2).astype(np.int32)
    spiky[[5, 9]] = [100_000, -70_000]  # beyond any table: escapes
    rows = np.stack([
        np.zeros(length, np.int32),
        np.round(rng.laplace(size=length) * 3).astype(np.int32),
        np.round(rng.normal(size=length) * 50).astype(np.int32),  # wider than the grid: a shift
        np.round(rng.normal(size=length) * 0.3).astype(np.int32),
        spiky,
        np.full(length, -(2**31), np.int32),  # the int32 extremes
        np.full(length, 2**31 - 1, np.int32),
        np.round(rng.laplace(size=length) * 5000).astype(np.int32),
    ])
    codes = _chunked(rows, 2)
    coded = kv_transform.entropy_encode(codes, interleaved=interleaved)
    families = [-1 if t < 0 else 1 + t // transform_tables.GRID for t in coded.tables.tolist()]
    assert families[:5] == [-1, transform_tables.LAPLACE, transform_tables.GAUSSIAN, transform_tables.LAPLACE, transform_tables.GAUSSIAN]
    assert coded.shifts[2] > 0 and coded.shifts[7] > coded.shifts[2] and coded.shifts[1] == coded.shifts[3] == 0
    assert len(coded.chunk_ends) == 2 and coded.chunk_ends[-1] == len(coded.words)
    assert (kv_transform.entropy_decode(coded, length, 4, interleaved=interleaved) == codes).all()
    assert (kv_transform.entropy_decode(coded, length, 4, out_dtype=np.float32, interleaved=interleaved)
            == codes.astype(np.float32)).all()  # as reconstruct takes them
    # The zero row costs nothing; each modelled row is near its distribution's entropy (a discrete
    # Laplace of scale b: about log2(2 e b) bits), far under the 32 bits of raw int32.
    def bits_per_value(row: np.ndarray) -> float:
        flush = 8 if interleaved else 4  # each state's final 32 bits
        return (kv_transform.entropy_encode(_chunked(row[None], 1), interleaved=interleaved).words.nbytes - flush) * 8 / length

    assert bits_per_value(rows[0]) == 0
    assert bits_per_value(rows[1]) < np.log2(2 * np.e * 3) + 0.5
    assert bits_per_value(rows[7]) < np.log2(2 * np.e * 5000) + 0.5


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int32, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(0, 40)),
                  elements=st.one_of(st.integers(-4, 4), st.integers(-(2**31), 2**31 - 1))), st.booleans())
def test_entropy_coder_round_trips_any_codes(codes, interleaved) -> None:
    """Any int32 values, including rows that do not compress at all (the encoder's retry with room
    for the worst case), odd and even row lengths, with one state or two."""
    coded = kv_transform.entropy_encode(codes, interleaved=interleaved)
    assert (kv_transform.entropy_decode(coded, codes.shape[2], codes.shape[1], interleaved=interleaved) == codes).all()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_entropy_decoder_refuses_a_corrupt_payload_and_never_reads_outside_it(data) -> None:
    """Whatever is changed (words cut or altered, tables, shifts, chunk ends), decoding raises
    ValueError or returns codes of the right shape (rANS carries no checksum: the blob's SHA-256
    catches what decodes wrong); an unchanged payload gives the codes back. The compiled decoder
    checks every read, so nothing crashes."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    codes = np.round(rng.laplace(size=(2, 3, 50)) * rng.choice([0.3, 4, 300], size=(3, 1))).astype(np.int32)
    interleaved = data.draw(st.booleans())
    coded = kv_transform.entropy_encode(codes, interleaved=interleaved)
    words, ends = coded.words.copy(), coded.chunk_ends.copy()
    tables, shifts = coded.tables.copy(), coded.shifts.copy()
    change = data.draw(st.sampled_from(["cut", "word", "table", "shift", "ends"]))
    if change == "cut":
        words = words[: data.draw(st.integers(0, max(0, len(words) - 1)))]
    elif change == "word":
        words[data.draw(st.integers(0, len(words) - 1))] ^= data.draw(st.integers(1, 0xFFFF))
    elif change == "table":
        tables[data.draw(st.integers(0, len(tables) - 1))] = data.draw(st.integers(-(2**15), 2**15 - 1))
    elif change == "shift":
        shifts[data.draw(st.integers(0, len(shifts) - 1))] = data.draw(st.integers(0, 255))
    else:
        ends[data.draw(st.integers(0, len(ends) - 1))] += data.draw(st.integers(-5, 5))
    altered = kv_transform.CodedComponents(words, ends, tables, shifts)
    unchanged = all(np.array_equal(a, b) for a, b in
                    ((words, coded.words), (ends, coded.chunk_ends), (tables, coded.tables), (shifts, coded.shifts)))
    try:
        decoded = kv_transform.entropy_decode(altered, 50, 3, interleaved=interleaved)
    except ValueError:
        assert not unchanged
        return
    assert decoded.shape == codes.shape and decoded.dtype == codes.dtype
    if unchanged:
        assert (decoded == codes).all()


def test_model_tables_are_bit_identical_everywhere() -> None:
    """The decoder uses the encoder's tables; any drift (another numpy, CPU or libm) would make
    blobs undecodable elsewhere, so the exact integers are pinned."""
    tables = transform_tables.table_set()
    assert tables.freqs.shape == (2 * transform_tables.GRID, 169) and (tables.freqs.sum(1) == 1 << rans.PRECISION).all()
    digest = hashlib.sha256(tables.widths.astype("<i4").tobytes() + tables.freqs.astype("<i4").tobytes())
    assert digest.hexdigest() == "37ea219d37632bddb876f2df5fdc7f8bdf1afe587134b7f570c6d121c593e11d"


def _random_blob(transform, tokens: int, seed: int) -> tuple[list[torch.Tensor], blob.BlobMeta, bytes]:
    """Random K (= V) of the transform's shape, their metadata and their transform blob."""
    layers, heads, dim, g = transform.layers, transform.channels // 64, 64, torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, heads, tokens, dim, generator=g) for _ in range(layers)]
    meta = blob.BlobMeta("fp", "m", layers, heads, dim, tokens, blob.token_ids_digest(range(tokens)), 0, 1e5)
    return keys, meta, blob.encode(keys, keys, meta, codec="transform", transform=transform)


def test_a_transform_blob_of_the_older_coder_is_refused_by_name(transform) -> None:
    data = _random_blob(transform, 12, seed=1)[2]
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    fields = json.loads(header["__metadata__"]["ctxcomp_kv"])
    header["__metadata__"]["ctxcomp_kv"] = json.dumps({**fields, "format_version": 3})
    text = json.dumps(header).encode()
    older = len(text).to_bytes(8, "little") + text + data[8 + size :]
    with pytest.raises(blob.BlobRefused, match="format version 3"):
        blob.decode(older, expect_fingerprint="fp", transform=transform)


def test_a_transform_payload_of_other_tensor_types_is_refused(transform) -> None:
    from safetensors.torch import load as st_load, save as st_save

    data = _random_blob(transform, 9, seed=2)[2]
    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    tensors = st_load(data)
    tensors["ans_words"] = torch.cat((tensors["ans_words"].view(torch.int8), torch.zeros(1, dtype=torch.int8)))  # odd bytes
    metadata["checksum_sha256"] = blob._checksum(tensors)  # a well-formed blob, only the payload is wrong
    with pytest.raises(blob.BlobRefused, match="another type"):
        blob.decode(st_save(tensors, metadata=metadata), expect_fingerprint="fp", transform=transform)


def test_pre_and_post_rope_are_inverse() -> None:
    k = torch.randn(2, 3, 40, 64)
    plain = Rope.plain(1e5, 64, start_pos=17)
    for rope in (plain, Rope(plain.inv_freq / 3, attention_scaling=1.3, start_pos=17)):
        back = kv_transform.to_post_rope(kv_transform.to_pre_rope(k, rope), rope)
        assert torch.allclose(back, k, atol=1e-5)


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
        want = next_token_logits(llm, ids, para.questions[0].text, None)
        got = next_token_logits(llm, ids, para.questions[0].text, data)
        assert got.argmax() == want.argmax()
        assert (got - want).abs().max() < 0.6  # int4 on the same paragraphs: ~1.3


def test_transform_blob_is_refused_without_its_transform(transform) -> None:
    keys, meta, data = _random_blob(transform, 20, seed=0)
    k, _, _ = blob.decode(data, expect_fingerprint="fp", transform=transform)
    assert k.shape == (meta.layers, meta.kv_heads, meta.tokens, meta.head_dim)
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
    subprocess.run([sys.executable, "-m", "training.calibrate_kv_transform", "--tiny", "--out", str(out)],
                   check=True, timeout=300, env=env, cwd=CHECKOUT)
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

    # The same run calibrates the headpca codec's per-head bases: values round within half a step
    # in each head's basis, for every component the blob codes.
    assert made.heads is not None and made.heads.key_matrix.shape == (30, 3, 64, 64)
    data = blob.encode(result.keys, result.values, meta, codec="headpca", transform=made)
    _, v, _ = blob.decode(data, expect_fingerprint=llm.fingerprint, transform=made)
    bases, coded = made.heads, blob.st_load(data)["components"][1].long()
    got = torch.einsum("lhsd,lhdj->lhjs", v[:, :, 4:], bases.value_matrix) - bases.value_offset[..., None]
    want = torch.einsum("lhsd,lhdj->lhjs", want_v[:, :, 4:], bases.value_matrix) - bases.value_offset[..., None]
    for layer in range(30):
        for head in range(3):
            used = coded[layer, head]
            assert (got[layer, head, :used] - want[layer, head, :used]).abs().max() <= bases.step * 0.5 * 1.01
