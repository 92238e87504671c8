"""Blobs written by every earlier format version still decode to what was encoded.

tests/kv/data/old_blobs holds blobs written by the blob module of the commit that introduced
each format version (1: 8b7ada6, 2: eb544ac, 3: 5ec4a10, 4: the transform codec's rANS), all
of the same K/V (reference.safetensors: [L=2, H=2, S=40, D=16], seed 0), and one format-4
"transform" blob of the shipped KV transform's shape with what it decoded to when written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctxcomp import models
from ctxcomp.kv import blob

OLD = Path(__file__).parent / "data" / "old_blobs"
TOLERANCE = {"fp16": 1e-3, "bf16": 1e-2, "int8": 0.05, "int4": 0.6}


@pytest.mark.parametrize("path", [p for p in sorted(OLD.glob("v[1-4]-*.kvblob")) if "transform" not in p.stem], ids=lambda p: p.stem)
def test_every_older_format_decodes_to_what_was_encoded(path: Path) -> None:
    reference = load_file(OLD / "reference.safetensors")
    codec = path.stem.split("-")[1]
    k, v, meta = blob.decode(path.read_bytes(), expect_fingerprint="fixture-model")
    assert meta.format_version == int(path.stem[1]) and meta.codec == codec
    assert k.shape == reference["k"].shape and v.shape == reference["v"].shape
    assert (k - reference["k"]).abs().max() <= TOLERANCE[codec] * reference["k"].abs().max()
    assert (v - reference["v"]).abs().max() <= TOLERANCE[codec] * reference["v"].abs().max()


def test_a_format_4_transform_blob_decodes_bit_for_bit() -> None:
    transform = models.load_kv_transform()
    expected = load_file(OLD / "v4-transform-decoded.safetensors")
    k, v, meta = blob.decode((OLD / "v4-transform.kvblob").read_bytes(), expect_fingerprint="fixture-model", transform=transform)
    assert meta.format_version == 4 and meta.codec == "transform"
    assert torch.equal(k, expected["k"]) and torch.equal(v, expected["v"])


def _with_fields(data: bytes, **changes) -> bytes:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    fields = json.loads(header["__metadata__"]["ctxcomp_kv"])
    header["__metadata__"]["ctxcomp_kv"] = json.dumps({**fields, **changes})
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + size :]


def test_an_old_blob_of_a_scaled_rope_or_with_unknown_fields_is_refused_by_name() -> None:
    data = (OLD / "v2-fp16.kvblob").read_bytes()
    with pytest.raises(blob.BlobRefused, match="RoPE scaling"):
        blob.decode(_with_fields(data, rope_scaling="llama3"), expect_fingerprint="fixture-model")
    with pytest.raises(blob.BlobRefused, match="does not know: colour"):
        blob.decode(_with_fields(data, colour="blue"), expect_fingerprint="fixture-model")


def test_a_payload_that_does_not_fit_its_metadata_is_refused_not_a_crash() -> None:
    data = (OLD / "v3-int8.kvblob").read_bytes()
    with pytest.raises(blob.BlobRefused, match="does not match its metadata"):
        blob.decode(_with_fields(data, key_group=7), expect_fingerprint="fixture-model")
