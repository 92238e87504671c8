"""KV blobs: a model's per-layer K/V for one token sequence, as versioned, checksummed bytes.

A blob is a safetensors file (K and V tensors, plus quantization scales when
quantized) whose metadata carries everything a loader must check before use:
format version, the model fingerprint, shapes, dtype, layout, token count and
token-id hash, start position, that K is stored after RoPE and with which
RoPE base, the codec and a SHA-256 over the tensor bytes. With zstd on, the
safetensors bytes are compressed whole behind a magic prefix.

Codecs (CacheGen/KIVI style): "fp16" and "bf16" raw; "int8" and "int4"
symmetric, keys with one scale per channel and group of KEY_GROUP tokens (key
outliers live in channels), values with one scale per token; the first
SINK_TOKENS tokens of a context that starts at position 0 stay fp16.
int4 packs two values per byte.

Layout "LHSD": [layers, kv_heads, tokens, head_dim], batch 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ctxcomp.errors import CtxcompError

FORMAT_VERSION = 1
LAYOUT = "LHSD"
ZSTD_MAGIC = b"CTXKVZ1\n"
Codec = Literal["fp16", "bf16", "int8", "int4"]
KEY_GROUP = 32  # KIVI-style: per-channel key scales over groups of 32 tokens
SINK_TOKENS = 4  # the first tokens draw much of every head's attention: stored exactly
_QMAX = {"int8": 127, "int4": 7}


class BlobRefused(CtxcompError):
    """A blob that must not be used: corrupt, another format version, or made for another model."""


@dataclass(frozen=True)
class BlobMeta:
    model_fingerprint: str
    model_id: str
    layers: int
    kv_heads: int
    head_dim: int
    tokens: int
    token_ids_sha256: str
    start_pos: int
    rope_theta: float
    rope_scaling: str = "none"
    k_rope: str = "post"  # K is stored after RoPE at positions start_pos..start_pos+tokens-1
    dtype: str = "float32"  # dtype the tensors are restored to
    codec: str = "fp16"
    key_group: int = 0  # quantized codecs: tokens sharing one key scale per channel (0 = all)
    sink_tokens: int = 0  # quantized codecs: leading tokens kept in fp16 (attention sinks)
    compression: str = "none"
    layout: str = LAYOUT
    format_version: int = FORMAT_VERSION


def token_ids_digest(token_ids: Sequence[int]) -> str:
    """Stable across processes and machines: SHA-256 over little-endian int64 ids."""
    return hashlib.sha256(torch.as_tensor(list(token_ids), dtype=torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _quantize(x: torch.Tensor, reduce_dim: int, codec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of x; one scale shared along reduce_dim. Returns (int8 codes, fp32 scale)."""
    qmax = _QMAX[codec]
    # Rounded to fp16 first, since that is how the scale is stored.
    scale = (x.abs().amax(dim=reduce_dim, keepdim=True).float().clamp(min=1e-4) / qmax).half().float()
    codes = torch.round(x.float() / scale).clamp(-qmax, qmax).to(torch.int8)
    return codes, scale


def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-7, 7], last dim even -> uint8 with two 4-bit values per byte."""
    nibbles = (codes + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).flatten(-2)


def encode(
    keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], meta: BlobMeta, *, codec: Codec = "fp16", zstd_level: int | None = None
) -> bytes:
    """keys/values: per layer [1, H_kv, S, D] (or [H_kv, S, D]) -> blob bytes."""
    k = torch.stack([t.reshape(t.shape[-3:]) for t in keys]).detach().cpu()  # [L, H, S, D]
    v = torch.stack([t.reshape(t.shape[-3:]) for t in values]).detach().cpu()
    if tuple(k.shape) != (meta.layers, meta.kv_heads, meta.tokens, meta.head_dim) or k.shape != v.shape:
        raise ValueError(f"K {tuple(k.shape)} / V {tuple(v.shape)} do not match the metadata's [L, H, S, D]")
    if codec in ("fp16", "bf16"):
        dtype = torch.float16 if codec == "fp16" else torch.bfloat16
        tensors = {"k": k.to(dtype).contiguous(), "v": v.to(dtype).contiguous()}
    elif codec in _QMAX:
        sinks = min(SINK_TOKENS, meta.tokens) if meta.start_pos == 0 else 0
        k_sink, v_sink = k[:, :, :sinks].half(), v[:, :, :sinks].half()
        # Their large norms would otherwise set the scales of the tokens around them.
        k, v = k.clone(), v.clone()
        k[:, :, :sinks] = 0
        v[:, :, :sinks] = 0
        groups = -(-meta.tokens // KEY_GROUP)
        k_grouped = torch.nn.functional.pad(k, (0, 0, 0, groups * KEY_GROUP - meta.tokens))
        k_grouped = k_grouped.view(meta.layers, meta.kv_heads, groups, KEY_GROUP, meta.head_dim)
        k_codes, k_scale = _quantize(k_grouped, reduce_dim=3, codec=codec)  # per channel, per token group
        k_codes = k_codes.view(meta.layers, meta.kv_heads, groups * KEY_GROUP, meta.head_dim)
        v_codes, v_scale = _quantize(v, reduce_dim=3, codec=codec)  # per token: over dims
        if codec == "int4":
            k_codes, v_codes = _pack_int4(k_codes), _pack_int4(v_codes)
        tensors = {

            "k": k_codes.contiguous(),
            "v": v_codes.contiguous(),
            "k_scale": k_scale.half().contiguous(),  # fp16 scales: 2 bytes per channel / per token
            "v_scale": v_scale.half().contiguous(),
            "k_sink": k_sink.contiguous(),
            "v_sink": v_sink.contiguous(),
        }
    else:
        raise ValueError(f"unknown codec {codec!r}; valid: fp16, bf16, int8, int4")
    full = {**asdict(meta), "codec": codec, "key_group": KEY_GROUP if codec in _QMAX else 0,
            "sink_tokens": (min(SINK_TOKENS, meta.tokens) if meta.start_pos == 0 else 0) if codec in _QMAX else 0, "compression": "zstd" if zstd_level is not None else "none", "dtype": str(k.dtype).removeprefix("torch.")}
    header = {"ctxcomp_kv": json.dumps(full, sort_keys=True), "checksum_sha256": _checksum(tensors)}
    data = st_save(tensors, metadata=header)
    if zstd_level is None:
        return data
    import zstandard

    return ZSTD_MAGIC + zstandard.ZstdCompressor(level=zstd_level).compress(data)


def _open(blob: bytes) -> tuple[dict[str, torch.Tensor], BlobMeta]:
    """Tensors and metadata after the format and checksum checks. Raises BlobRefused."""
    if blob.startswith(ZSTD_MAGIC):
        import zstandard

        try:
            blob = zstandard.ZstdDecompressor().decompress(blob[len(ZSTD_MAGIC) :])
        except zstandard.ZstdError as err:
            raise BlobRefused(f"KV blob: zstd payload is corrupt ({err})") from err
    try:
        header = _safetensors_metadata(blob)
        tensors = st_load(blob)
        fields = json.loads(header["ctxcomp_kv"])
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt blob
        raise BlobRefused(f"KV blob: not a readable ctxcomp blob ({type(err).__name__}: {err})") from err
    if fields.get("format_version") != FORMAT_VERSION:
        raise BlobRefused(f"KV blob: format version {fields.get('format_version')}, this reader knows {FORMAT_VERSION}")
    if _checksum(tensors) != header.get("checksum_sha256"):
        raise BlobRefused("KV blob: checksum mismatch (the blob is corrupt or was altered)")
    return tensors, BlobMeta(**fields)


def inspect(blob: bytes) -> BlobMeta:
    """The metadata of an intact blob (format and checksum verified), without decoding tensors."""
    return _open(blob)[1]


def decode(blob: bytes, *, expect_fingerprint: str) -> tuple[torch.Tensor, torch.Tensor, BlobMeta]:
    """Blob bytes -> K, V [L, H, S, D] and metadata, after every check. Raises BlobRefused."""
    tensors, meta = _open(blob)
    if meta.model_fingerprint != expect_fingerprint:
        raise BlobRefused(
            f"KV blob: made for model {meta.model_id} (fingerprint {meta.model_fingerprint[:12]}), "
            f"not for this model (fingerprint {expect_fingerprint[:12]})"
        )
    dtype = getattr(torch, meta.dtype)
    if meta.codec in ("fp16", "bf16"):
        return tensors["k"].to(dtype), tensors["v"].to(dtype), meta
    k_codes, v_codes = tensors["k"], tensors["v"]
    if meta.codec == "int4":
        k_codes, v_codes = _unpack_int4(k_codes), _unpack_int4(v_codes)
    scale = tensors["k_scale"].float()  # [L, H, groups, 1, D]
    grouped = k_codes.view(meta.layers, meta.kv_heads, scale.shape[2], meta.key_group, meta.head_dim)
    k = (grouped.float() * scale).view(meta.layers, meta.kv_heads, -1, meta.head_dim)[:, :, : meta.tokens].to(dtype)
    v = (v_codes.float() * tensors["v_scale"].float()).to(dtype)
    k[:, :, : meta.sink_tokens] = tensors["k_sink"].to(dtype)
    v[:, :, : meta.sink_tokens] = tensors["v_sink"].to(dtype)
    return k, v, meta


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    size = int.from_bytes(blob[:8], "little")
    if size <= 0 or 8 + size > len(blob):
        raise ValueError("truncated safetensors header")
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})
