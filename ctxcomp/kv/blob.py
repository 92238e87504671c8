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
int4 packs two values per byte. "transform" (KVTC style, ctxcomp.kv.transform):
keys before RoPE and values mapped by the model's calibrated KvTransform,
quantized with one step and ANS-coded; it needs that transform on both sides
and the blob names it by SHA-256. "headpca" (ctxcomp.kv.head_pca): the same
with per-head bases (the KvTransform's HeadBases), a step per token from the
attention the context gives it, sinks and optionally the last tokens exact.

Layout "LHSD": [layers, kv_heads, tokens, head_dim], batch 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ctxcomp.errors import CtxcompError
from ctxcomp.kernels.attention import Rope
from ctxcomp.kv import transform as kv_transform

if TYPE_CHECKING:
    from ctxcomp.models.kv_transform import HeadBases, KvTransform

FORMAT_VERSION = 5  # 2 added the transform codec, 3 the model's RoPE frequencies, 4 the transform codec's rANS, 5 headpca
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # all of them, but a transform blob only from 4 on
LAYOUT = "LHSD"
ZSTD_MAGIC = b"CTXKVZ1\n"
Codec = Literal["fp16", "bf16", "int8", "int4", "transform", "headpca"]
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
    k_rope: str = "post"  # K is stored after RoPE at positions start_pos..start_pos+tokens-1
    dtype: str = "float32"  # dtype the tensors are restored to
    codec: str = "fp16"
    key_group: int = 0  # quantized codecs: tokens sharing one key scale per channel (0 = all)
    sink_tokens: int = 0  # quantized codecs: leading tokens kept in fp16 (attention sinks)
    recent_tokens: int = 0  # codec "headpca": last tokens kept in fp16
    transform_sha256: str = ""  # codecs "transform" / "headpca": the KvTransform (or HeadBases) the blob was coded with
    quant_step: float = 0.0  # codecs "transform" / "headpca": the coefficients' quantization step
    # The model's RoPE as K was rotated: inverse frequencies [D/2] with its scaling applied
    # (llama3, yarn, ...) and the factor on cos/sin; empty = plain RoPE with rope_theta.
    rope_inv_freq: tuple[float, ...] = ()
    rope_attention_scaling: float = 1.0
    compression: str = "none"
    layout: str = LAYOUT
    format_version: int = FORMAT_VERSION


def meta_rope(meta: BlobMeta) -> Rope:
    """The RoPE the blob's K was rotated with, at its start position."""
    if not meta.rope_inv_freq:  # written before format 3: plain RoPE
        return Rope.plain(meta.rope_theta, meta.head_dim, meta.start_pos)
    return Rope(torch.tensor(meta.rope_inv_freq, dtype=torch.float32), meta.rope_attention_scaling, meta.start_pos)


def rope_fields(rope: Rope) -> dict[str, Any]:
    """BlobMeta's RoPE fields for a Rope (float32 frequencies are exact in JSON's float64)."""
    return {"rope_inv_freq": tuple(float(f) for f in rope.inv_freq.tolist()), "rope_attention_scaling": rope.attention_scaling}


def token_ids_digest(token_ids: Sequence[int]) -> str:
    """Stable across processes and machines: SHA-256 over little-endian int64 ids."""
    return hashlib.sha256(torch.as_tensor(list(token_ids), dtype=torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        tensor = tensors[name]
        # An empty tensor (a transform blob without escapes) may carry a zero stride that view() refuses.
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
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


@dataclass(frozen=True)
class CodecImpl:
    """One codec: encode K/V [L, H, S, D] (and, optionally, the attention each token receives [S])
    to tensors plus the metadata fields it sets, and back.

    Both receive the KvTransform (or a function loading it) when the codec needs one, which
    `needs_transform` says; `uses_attention` says whether the encoder spends bits by attention
    weights (a prefill computes them only then): callers ask these, never the codec's name.
    """

    encode: Callable[[torch.Tensor, torch.Tensor, BlobMeta, Any, "torch.Tensor | None"], tuple[dict[str, torch.Tensor], dict[str, object]]]
    decode: Callable[[dict[str, torch.Tensor], BlobMeta, Any], tuple[torch.Tensor, torch.Tensor]]
    needs_transform: bool = False
    uses_attention: bool = False


def encode(
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    meta: BlobMeta,
    *,
    codec: Codec = "fp16",
    zstd_level: int | None = None,
    transform: KvTransform | None = None,
    attention: torch.Tensor | None = None,
) -> bytes:
    """keys/values: per layer [1, H_kv, S, D] (or [H_kv, S, D]) -> blob bytes.

    codecs "transform" and "headpca" need the model's KvTransform (ctxcomp.models.load_kv_transform()).
    attention [S]: the mean attention each token receives (PrefillResult.attention), for codecs
    that use it; they code without it too.
    The fields the codec decides (codec, dtype, key groups, sinks, transform, K's RoPE
    state, compression) are filled in; a caller's `meta` that sets one of them to a
    different value is refused, never silently rewritten.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; valid: {', '.join(CODECS)}")
    k = torch.stack([t.reshape(t.shape[-3:]) for t in keys]).detach().cpu()  # [L, H, S, D]
    v = torch.stack([t.reshape(t.shape[-3:]) for t in values]).detach().cpu()
    if tuple(k.shape) != (meta.layers, meta.kv_heads, meta.tokens, meta.head_dim) or k.shape != v.shape:
        raise ValueError(f"K {tuple(k.shape)} / V {tuple(v.shape)} do not match the metadata's [L, H, S, D]")
    tensors, fields = CODECS[codec].encode(k, v, meta, transform, attention)
    fields = {**fields, "codec": codec, "compression": "zstd" if zstd_level is not None else "none",
              "dtype": str(k.dtype).removeprefix("torch.")}
    header = {"ctxcomp_kv": json.dumps(_with_codec_fields(meta, fields), sort_keys=True), "checksum_sha256": _checksum(tensors)}
    data = st_save(tensors, metadata=header)
    if zstd_level is None:
        return data
    import zstandard

    return ZSTD_MAGIC + zstandard.ZstdCompressor(level=zstd_level).compress(data)


def _with_codec_fields(meta: BlobMeta, fields: dict[str, object]) -> dict[str, object]:
    """The stored metadata: the caller's, plus the codec's fields where the caller left the default."""
    given, default = asdict(meta), asdict(_DEFAULTS)
    for name, value in fields.items():
        if given[name] != default[name] and given[name] != value:
            raise ValueError(f"metadata field {name}={given[name]!r} contradicts codec {fields['codec']!r} ({value!r})")
    return {**given, **fields, "format_version": FORMAT_VERSION}


def _encode_raw(dtype: torch.dtype) -> Callable[..., tuple[dict[str, torch.Tensor], dict[str, object]]]:
    def encode_raw(k: torch.Tensor, v: torch.Tensor, meta: BlobMeta, transform: KvTransform | None, attention: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        return {"k": k.to(dtype).contiguous(), "v": v.to(dtype).contiguous()}, {}

    return encode_raw


def _decode_raw(tensors: dict[str, torch.Tensor], meta: BlobMeta, transform: KvTransform | Callable[[], KvTransform] | None) -> tuple[torch.Tensor, torch.Tensor]:
    return tensors["k"], tensors["v"]


def _sinks(meta: BlobMeta) -> int:
    """Leading tokens a quantized codec stores exactly: the attention sinks of a context at position 0."""
    return min(SINK_TOKENS, meta.tokens) if meta.start_pos == 0 else 0


def _encode_quantized(codec: str) -> Callable[..., tuple[dict[str, torch.Tensor], dict[str, object]]]:
    def encode_quantized(k: torch.Tensor, v: torch.Tensor, meta: BlobMeta, transform: KvTransform | None, attention: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        tensors = _quantized_tensors(k, v, meta, codec)
        return tensors, {"key_group": KEY_GROUP, "sink_tokens": _sinks(meta)}

    return encode_quantized


def _quantized_tensors(k: torch.Tensor, v: torch.Tensor, meta: BlobMeta, codec: str) -> dict[str, torch.Tensor]:
    sinks = _sinks(meta)
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
    return {
        "k": k_codes.contiguous(),
        "v": v_codes.contiguous(),
        "k_scale": k_scale.half().contiguous(),  # fp16 scales: 2 bytes per channel / per token
        "v_scale": v_scale.half().contiguous(),
        "k_sink": k_sink.contiguous(),
        "v_sink": v_sink.contiguous(),
    }


def _check_transform(transform: KvTransform, meta: BlobMeta) -> None:
    if transform.layers != meta.layers or transform.channels != meta.kv_heads * meta.head_dim:
        raise BlobRefused(
            f"KV blob: the KV transform is for {transform.layers} layers x {transform.channels} channels, "
            f"the blob has {meta.layers} x {meta.kv_heads * meta.head_dim}"
        )


def _encode_transform(
    k: torch.Tensor, v: torch.Tensor, meta: BlobMeta, transform: KvTransform | None, attention: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    if transform is None:
        raise ValueError("codec 'transform' needs the model's KvTransform (ctxcomp.models.load_kv_transform())")
    _check_transform(transform, meta)
    sinks = _sinks(meta)
    k_rows = kv_transform.pre_rope_rows(k, meta_rope(meta))  # [L, S, C]
    v_rows = kv_transform.heads_together(v.float())
    codes = torch.empty(2 * meta.layers, transform.channels, meta.tokens - sinks, dtype=torch.int32)
    kv_transform.coefficients(k_rows[:, sinks:], transform.key_matrix, transform.key_offset, transform.step, codes[: meta.layers])
    kv_transform.coefficients(v_rows[:, sinks:], transform.value_matrix, transform.value_offset, transform.step, codes[meta.layers :])
    coded = kv_transform.entropy_encode(codes.numpy())  # one stream per layer's K or V
    tensors = {
        **_coded_tensors(coded),
        # Sinks before RoPE, like the rest of K: [L, H, sinks, D]
        "k_sink": k_rows[:, :sinks].view(meta.layers, sinks, meta.kv_heads, meta.head_dim).permute(0, 2, 1, 3).half().contiguous(),
        "v_sink": v[:, :, :sinks].half().contiguous(),
    }
    fields = {"sink_tokens": sinks, "transform_sha256": transform.digest, "quant_step": transform.step, "k_rope": "pre"}
    return tensors, fields


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
    if fields.get("format_version") not in READABLE_VERSIONS:
        raise BlobRefused(f"KV blob: format version {fields.get('format_version')}, this reader knows {READABLE_VERSIONS}")
    if _checksum(tensors) != header.get("checksum_sha256"):
        raise BlobRefused("KV blob: checksum mismatch (the blob is corrupt or was altered)")
    return tensors, BlobMeta(**_current_fields(fields))


def _current_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The stored metadata as today's BlobMeta reads it. Formats 1 and 2 named the RoPE by
    `rope_scaling` ("none": plain RoPE with rope_theta, which an empty rope_inv_freq means now);
    a scaled RoPE's frequencies were not stored, so such a blob's K cannot be placed anywhere."""
    fields = dict(fields)
    scaling = fields.pop("rope_scaling", "none")
    if scaling != "none":
        raise BlobRefused(f"KV blob: format version {fields['format_version']} of a model with RoPE scaling {scaling!r} does not "
                          "store the RoPE frequencies its keys were rotated with; encode it again")
    if "rope_inv_freq" in fields:
        fields["rope_inv_freq"] = tuple(fields["rope_inv_freq"])
    unknown = set(fields) - set(BlobMeta.__dataclass_fields__)
    if unknown:
        raise BlobRefused(f"KV blob: metadata fields this reader does not know: {', '.join(sorted(unknown))}")
    return fields


def inspect(blob: bytes) -> BlobMeta:
    """The metadata of an intact blob (format and checksum verified), without decoding tensors."""
    return _open(blob)[1]


def decode(
    blob: bytes, *, expect_fingerprint: str, transform: KvTransform | Callable[[], KvTransform] | None = None
) -> tuple[torch.Tensor, torch.Tensor, BlobMeta]:
    """Blob bytes -> K (after RoPE), V [L, H, S, D] and metadata, after every check. Raises BlobRefused.

    A "transform" blob needs the KvTransform it was coded with (checked by SHA-256); `transform`
    may be a function that loads it, called only for such blobs.
    """
    tensors, meta = _open(blob)
    if meta.model_fingerprint != expect_fingerprint:
        raise BlobRefused(
            f"KV blob: made for model {meta.model_id} (fingerprint {meta.model_fingerprint[:12]}), "
            f"not for this model (fingerprint {expect_fingerprint[:12]})"
        )
    if meta.codec not in CODECS:
        raise BlobRefused(f"KV blob: unknown codec {meta.codec!r}; this reader knows {', '.join(CODECS)}")
    dtype = getattr(torch, meta.dtype)
    try:
        k, v = CODECS[meta.codec].decode(tensors, meta, transform)
    except (KeyError, RuntimeError, ValueError) as err:  # tensors that do not fit the metadata
        raise BlobRefused(f"KV blob: the {meta.codec} payload does not match its metadata ({type(err).__name__}: {err})") from err
    return k.to(dtype), v.to(dtype), meta


def _decode_quantized(tensors: dict[str, torch.Tensor], meta: BlobMeta, transform: KvTransform | Callable[[], KvTransform] | None) -> tuple[torch.Tensor, torch.Tensor]:
    k_codes, v_codes = tensors["k"], tensors["v"]
    if meta.codec == "int4":
        k_codes, v_codes = _unpack_int4(k_codes), _unpack_int4(v_codes)
    scale = tensors["k_scale"].float()  # [L, H, groups, 1, D]; format 1: [L, H, 1, D], one group of every token
    group = meta.key_group or meta.tokens
    grouped = k_codes.view(meta.layers, meta.kv_heads, -1, group, meta.head_dim)
    scale = scale.view(meta.layers, meta.kv_heads, grouped.shape[2], 1, meta.head_dim)
    k = (grouped.float() * scale).view(meta.layers, meta.kv_heads, -1, meta.head_dim)[:, :, : meta.tokens]
    v = v_codes.float() * tensors["v_scale"].float()
    if meta.sink_tokens:  # format 2 on
        k[:, :, : meta.sink_tokens] = tensors["k_sink"].float()
        v[:, :, : meta.sink_tokens] = tensors["v_sink"].float()
    return k, v


def _coded_tensors(coded: kv_transform.CodedComponents) -> dict[str, torch.Tensor]:
    """The rANS payload of the transform codecs as blob tensors."""
    import numpy as np

    return {
        "ans_words": torch.from_numpy(coded.words.view(np.int16).copy()),
        "ans_chunk_ends": torch.from_numpy(coded.chunk_ends.copy()),
        "component_table": torch.from_numpy(coded.tables.copy()),
        "component_shift": torch.from_numpy(coded.shifts.copy()),
    }


_CODED_DTYPES = {"ans_words": torch.int16, "ans_chunk_ends": torch.int64, "component_table": torch.int16, "component_shift": torch.uint8}


def _coded_components(tensors: dict[str, torch.Tensor]) -> kv_transform.CodedComponents:
    import numpy as np

    if any(name not in tensors or tensors[name].dtype != dtype for name, dtype in _CODED_DTYPES.items()):
        raise BlobRefused("KV blob: transform payload is missing a tensor or has one of another type")
    return kv_transform.CodedComponents(
        words=tensors["ans_words"].numpy().view(np.uint16),
        chunk_ends=tensors["ans_chunk_ends"].numpy(),
        tables=tensors["component_table"].numpy(),
        shifts=tensors["component_shift"].numpy(),
    )


def _decode_transform(tensors: dict[str, torch.Tensor], meta: BlobMeta, transform: KvTransform | Callable[[], KvTransform] | None) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    transform = transform() if callable(transform) else transform

    if transform is None:
        raise BlobRefused(f"KV blob: codec 'transform' needs KV transform {meta.transform_sha256[:12]}; none was given")
    if transform.digest != meta.transform_sha256:
        raise BlobRefused(
            f"KV blob: coded with KV transform {meta.transform_sha256[:12]}, not with this one ({transform.digest[:12]})"
        )
    _check_transform(transform, meta)
    if meta.format_version < 4:
        raise BlobRefused(f"KV blob: a 'transform' blob of format version {meta.format_version} (an older entropy coder); encode it again")
    coded = _coded_components(tensors)
    coded_tokens, sinks = meta.tokens - meta.sink_tokens, meta.sink_tokens
    if len(coded.tables) != 2 * meta.layers * transform.channels or coded_tokens < 0:
        raise BlobRefused("KV blob: transform payload does not match the blob's shape")
    try:
        codes = kv_transform.entropy_decode(coded, coded_tokens, transform.channels, out_dtype=np.float32)
    except ValueError as err:
        raise BlobRefused(f"KV blob: transform payload does not decode ({err})") from err
    codes = torch.from_numpy(codes)  # [2L, C, S - sinks]
    k_rows = torch.empty(meta.layers, meta.tokens, transform.channels)
    k_rows[:, :sinks] = kv_transform.heads_together(tensors["k_sink"].float())
    k_rows[:, sinks:] = kv_transform.reconstruct(codes[: meta.layers], transform.key_inverse, transform.key_offset, meta.quant_step)
    v_rows = kv_transform.reconstruct(codes[meta.layers :], transform.value_inverse, transform.value_offset, meta.quant_step)
    v = torch.empty(meta.layers, meta.kv_heads, meta.tokens, meta.head_dim)
    v[:, :, :sinks] = tensors["v_sink"].float()
    v[:, :, sinks:] = v_rows.view(meta.layers, coded_tokens, meta.kv_heads, meta.head_dim).permute(0, 2, 1, 3)
    return kv_transform.post_rope_from_rows(k_rows, meta_rope(meta), meta.kv_heads), v


def _head_bases(transform: KvTransform | Callable[[], KvTransform] | None, meta: BlobMeta, digest: str | None) -> HeadBases:
    """The KvTransform's per-head bases, checked against the blob's shape (and digest, when decoding)."""
    transform = transform() if callable(transform) else transform
    bases = transform.heads if transform is not None else None
    if bases is None:
        raise BlobRefused("KV blob: codec 'headpca' needs a KV transform with per-head bases (head_pca.safetensors); none was given")
    if digest is not None and bases.digest != digest:
        raise BlobRefused(f"KV blob: coded with per-head bases {digest[:12]}, not with these ({bases.digest[:12]})")
    layers, heads, dim = bases.key_matrix.shape[:3]
    if (layers, heads, dim) != (meta.layers, meta.kv_heads, meta.head_dim):
        raise BlobRefused(f"KV blob: the per-head bases are for [L, H, D] = {[layers, heads, dim]}, the blob has "
                          f"{[meta.layers, meta.kv_heads, meta.head_dim]}")
    return bases


def _encode_head_pca(
    k: torch.Tensor, v: torch.Tensor, meta: BlobMeta, transform: KvTransform | None, attention: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    from ctxcomp.kv import head_pca

    try:
        bases = _head_bases(transform, meta, None)
    except BlobRefused as err:
        raise ValueError(str(err).removeprefix("KV blob: ")) from err
    first = _sinks(meta)
    last = max(first, meta.tokens - meta.recent_tokens)
    plan = head_pca.plan(bases, bases.step, first, last, attention)
    coded = head_pca.encode(k, v, meta_rope(meta), bases, bases.step, plan)
    tensors = {
        **_coded_tensors(coded),
        "token_levels": torch.from_numpy(plan.levels.copy()),
        "components": torch.from_numpy(plan.components.copy()),
        "k_sink": k[:, :, :first].half().contiguous(), "v_sink": v[:, :, :first].half().contiguous(),
        "k_recent": k[:, :, last:].half().contiguous(), "v_recent": v[:, :, last:].half().contiguous(),
    }
    fields = {"sink_tokens": first, "recent_tokens": meta.tokens - last, "transform_sha256": bases.digest,
              "quant_step": bases.step, "k_rope": "pre"}
    return tensors, fields


def _decode_head_pca(tensors: dict[str, torch.Tensor], meta: BlobMeta, transform: KvTransform | Callable[[], KvTransform] | None) -> tuple[torch.Tensor, torch.Tensor]:
    from ctxcomp.kv import head_pca

    bases = _head_bases(transform, meta, meta.transform_sha256)
    first, last = meta.sink_tokens, meta.tokens - meta.recent_tokens
    coded = _coded_components(tensors)
    levels, components = tensors.get("token_levels"), tensors.get("components")
    if not 0 <= first <= last <= meta.tokens or levels is None or components is None:
        raise BlobRefused("KV blob: headpca payload is missing its plan or names tokens the blob does not have")
    if (levels.dtype != torch.int8 or tuple(levels.shape) != (last - first,) or components.dtype != torch.uint8
            or tuple(components.shape) != (2, meta.layers, meta.kv_heads)):
        raise BlobRefused("KV blob: headpca plan tensors have another type or shape")
    if (levels.numel() and levels.abs().max() > head_pca.LEVELS) or (components.numel() and components.max() > meta.head_dim):
        raise BlobRefused("KV blob: headpca plan names a step level or component that does not exist")
    plan = head_pca.Plan(first, last, levels.numpy(), components.numpy())
    if len(coded.tables) != 2 * meta.layers * meta.kv_heads * plan.rows:
        raise BlobRefused("KV blob: headpca payload does not match the blob's shape")
    k = torch.empty(meta.layers, meta.kv_heads, meta.tokens, meta.head_dim)
    v = torch.empty_like(k)
    try:
        head_pca.decode(coded, meta_rope(meta), bases, meta.quant_step, plan, k, v)
    except ValueError as err:
        raise BlobRefused(f"KV blob: headpca payload does not decode ({err})") from err
    k[:, :, :first], v[:, :, :first] = tensors["k_sink"].float(), tensors["v_sink"].float()
    k[:, :, last:], v[:, :, last:] = tensors["k_recent"].float(), tensors["v_recent"].float()
    return k, v


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    size = int.from_bytes(blob[:8], "little")
    if size <= 0 or 8 + size > len(blob):
        raise ValueError("truncated safetensors header")
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})


CODECS: dict[str, CodecImpl] = {
    "fp16": CodecImpl(_encode_raw(torch.float16), _decode_raw),
    "bf16": CodecImpl(_encode_raw(torch.bfloat16), _decode_raw),
    "int8": CodecImpl(_encode_quantized("int8"), _decode_quantized),
    "int4": CodecImpl(_encode_quantized("int4"), _decode_quantized),
    "transform": CodecImpl(_encode_transform, _decode_transform, needs_transform=True),
    "headpca": CodecImpl(_encode_head_pca, _decode_head_pca, needs_transform=True, uses_attention=True),
}
_DEFAULTS = BlobMeta("", "", 0, 0, 0, 0, "", 0, 0.0)  # what a caller leaves unset
