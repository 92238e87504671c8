"""The "transform" KV codec: calibrated decorrelating transform, one quantization step, ANS coding.

Keys are brought back to before RoPE (their channel statistics do not depend on
position there), every layer's K and V [S, C] (C = kv_heads * head_dim) are
mapped by the model's KvTransform (ctxcomp/models/kv_transform.py), rounded with one
step, and the integer coefficients are entropy-coded component by component
with rANS (ctxcomp.kv.rans), one stream per layer's K or V, coded on several
threads. Each component is coded with the table of a fixed set that fits it on
this blob (a discrete Laplace or discrete Gaussian at one of GRID scales), so a
blob adapts to its own text; wide components code their values' low bits
uniformly (a shift) and the rest with the table; components that are all zero
cost nothing. Values beyond a table's edge are coded as the edge plus their 32 bits.

The table set is built with additions, multiplications, divisions and an exactly
rounded sum only (IEEE-exact on every machine), so the decoder has the encoder's
tables bit for bit (a test pins them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctxcomp.kernels.attention import Rope, apply_rope, rope_cos_sin
from ctxcomp.threads import on_cores


def to_pre_rope(k: torch.Tensor, rope: Rope) -> torch.Tensor:
    """K [..., S, D] rotated by `rope` at positions rope.start_pos.. -> the same keys before RoPE
    (the inverse rotation, and the model's cos/sin scaling divided out)."""
    cos, sin = rope_cos_sin(-torch.arange(rope.start_pos, rope.start_pos + k.shape[-2], device=k.device), rope.inv_freq)
    return (apply_rope(k.float(), cos, sin) / rope.attention_scaling).to(k.dtype)


def to_post_rope(k: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Keys before RoPE [..., S, D] -> rotated as the model does at positions rope.start_pos.."""
    cos, sin = rope.tables(k.shape[-2], k.device)
    return apply_rope(k, cos, sin)


def heads_together(x: torch.Tensor) -> torch.Tensor:
    """[L, H, S, D] -> [L, S, H*D]: the rows the transform maps, one per token."""
    layers, heads, seq, dim = x.shape
    return x.permute(0, 2, 1, 3).reshape(layers, seq, heads * dim)


def transformed(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """x [L, H, S, D] -> real coefficients [L, S, C], before rounding."""
    return torch.bmm(heads_together(x.float()), matrix) - offset[:, None, :]


def pre_rope_rows(k: torch.Tensor, rope: Rope) -> torch.Tensor:
    """K [L, H, S, D] after RoPE -> the keys before RoPE as rows [L, S, H*D] fp32 (to_pre_rope and
    heads_together in one pass: the inverse rotation writes the token-major layout directly)."""
    layers, heads, seq, dim = k.shape
    half = dim // 2
    cos, sin = rope.half_tables(seq, k.device)
    cos, sin = cos / rope.attention_scaling**2, sin / rope.attention_scaling**2  # rotate back and undo the scaling
    rows = torch.empty(layers, seq, heads, dim, device=k.device)
    out = rows.permute(0, 2, 1, 3)
    first, second = k[..., :half].float(), k[..., half:].float()
    torch.mul(first, cos, out=out[..., :half]).addcmul_(second, sin)
    torch.mul(second, cos, out=out[..., half:]).addcmul_(first, sin, value=-1.0)
    return rows.view(layers, seq, heads * dim)


def post_rope_from_rows(rows: torch.Tensor, rope: Rope, heads: int) -> torch.Tensor:
    """Keys before RoPE as rows [L, S, H*D] -> K [L, H, S, D] fp32 rotated as the model does (one pass)."""
    layers, seq, channels = rows.shape
    dim = channels // heads
    half = dim // 2
    cos, sin = rope.half_tables(seq, rows.device)
    grouped = rows.view(layers, seq, heads, dim).permute(0, 2, 1, 3)
    first, second = grouped[..., :half], grouped[..., half:]
    k = torch.empty(layers, heads, seq, dim, device=rows.device)
    torch.mul(first, cos, out=k[..., :half]).addcmul_(second, sin, value=-1.0)
    torch.mul(second, cos, out=k[..., half:]).addcmul_(first, sin)
    return k


def coefficients(rows: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, step: float, out: torch.Tensor) -> None:
    """rows [L, S, C] -> integer codes written into out [L, C, S] int32 (component-major, as entropy_encode
    takes them: the product is computed transposed, so no copy transposes it)."""
    scaled = torch.baddbmm(offset[:, :, None] / -step, (matrix / step).transpose(1, 2), rows.transpose(1, 2))
    out.copy_(scaled.round_())


def reconstruct(codes: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor, step: float) -> torch.Tensor:
    """codes [L, C, S] (any real dtype) -> rows [L, S, C] fp32: (codes * step + offset) @ inverse."""
    return torch.baddbmm(torch.bmm(offset[:, None, :], inverse), codes.float().transpose(1, 2), inverse * step)


@dataclass(frozen=True)
class CodedComponents:
    words: np.ndarray  # uint16: the chunks' rANS streams, one after another
    chunk_ends: np.ndarray  # int64 [chunks]: where each chunk's stream ends in words
    tables: np.ndarray  # int16 [chunks * R]: each row's table (-1: all zero)
    shifts: np.ndarray  # uint8 [chunks * R]: each row's low bits coded uniformly


def entropy_encode(codes: np.ndarray, interleaved: bool = False) -> CodedComponents:
    """codes [chunks, R, S] int32 (R rows of S values per chunk; a chunk is one layer's K or V)
    -> rANS words, one stream per chunk; `interleaved`: with two states (rans.encode_chunk),
    faster, and read only by entropy_decode(interleaved=True)."""
    from ctxcomp.kv import rans, transform_tables

    codes = np.ascontiguousarray(codes, dtype=np.int32)
    table_set, (chunks, width, length) = transform_tables.table_set(), codes.shape
    tables, shifts = np.zeros(chunks * width, dtype=np.int16), np.zeros(chunks * width, dtype=np.uint8)

    def encode(chunk: int) -> np.ndarray:
        transform_tables.fit_chunk(codes, chunk, tables, shifts)
        coded_rows = int((tables[chunk * width : (chunk + 1) * width] >= 0).sum())
        words = np.empty(coded_rows * length // 2 + 3 * length + 2, dtype=np.uint16)  # room for 8 bits a value
        start = rans.encode_chunk(codes, chunk, tables, shifts, table_set.widths, table_set.coder, words, interleaved)
        if start == rans.CORRUPT:  # a chunk that does not compress: room for the worst case
            words = np.empty(rans.word_bound(codes, chunk, tables, shifts, table_set.widths) + 3 * length + 2, dtype=np.uint16)
            start = rans.encode_chunk(codes, chunk, tables, shifts, table_set.widths, table_set.coder, words, interleaved)
        return words[start:]

    streams = on_cores(encode, chunks)
    chunk_ends = np.cumsum([len(stream) for stream in streams], dtype=np.int64)
    words = np.concatenate(streams) if streams else np.zeros(0, dtype=np.uint16)
    return CodedComponents(words, chunk_ends, tables, shifts)


def entropy_decode(coded: CodedComponents, length: int, width: int, out_dtype=np.int32, interleaved: bool = False) -> np.ndarray:
    """The inverse of entropy_encode (with the same `interleaved`): codes [chunks, width, length] (as
    out_dtype). Raises ValueError on a corrupt payload."""
    from ctxcomp.kv import rans, transform_tables

    table_set, chunks = transform_tables.table_set(), len(coded.chunk_ends)
    if not all(np.issubdtype(field.dtype, np.integer) for field in (coded.tables, coded.shifts, coded.chunk_ends)):
        raise ValueError("transform codec: the per-row fields and chunk ends must be integers")
    if len(coded.tables) != chunks * width or len(coded.shifts) != chunks * width:
        raise ValueError("transform codec: the per-row fields and chunks do not match")
    if len(coded.tables) and (coded.tables.min() < -1 or coded.tables.max() >= len(table_set.widths)
                              or coded.shifts.min() < 0 or coded.shifts.max() > transform_tables.MAX_SHIFT):
        raise ValueError("transform codec: a row names a table or shift that does not exist")
    ends = coded.chunk_ends.astype(np.int64)
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    if chunks and ((np.diff(ends) < 0).any() or ends[0] < 0 or ends[-1] != len(coded.words)):
        raise ValueError("transform codec: chunk ends are not in order or do not end with the words")
    out = np.empty((chunks, width, length), dtype=out_dtype)
    words, tables, shifts = np.ascontiguousarray(coded.words, dtype=np.uint16), coded.tables.astype(np.int16), coded.shifts.astype(np.uint8)
    statuses = on_cores(
        lambda chunk: rans.decode_chunk(words, int(starts[chunk]), int(ends[chunk]), chunk, tables, shifts, table_set.widths,
                                        table_set.starts, table_set.freqs, table_set.lookup, out, interleaved),
        chunks,
    )
    if any(status != 0 for status in statuses):
        raise ValueError("transform codec: an rANS stream is corrupt")
    return out
