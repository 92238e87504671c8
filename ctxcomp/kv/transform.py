"""The "transform" KV codec: calibrated decorrelating transform, one quantization step, ANS coding.

Keys are brought back to before RoPE (their channel statistics do not depend on
position there), every layer's K and V [S, C] (C = kv_heads * head_dim) are
mapped by the model's KvTransform (models/kv_transform.py), rounded with one
step, and the integer coefficients are entropy-coded component by component
with an ANS coder (constriction). Each component gets a two-parameter model
fitted on this blob: a discrete Laplace or discrete Gaussian and its scale
(fp16), so a blob adapts to its own text; components that are all zero cost
nothing. Coefficients beyond a component's table range are coded as the range
edge and stored verbatim in an escape list.

The tables are built from the stored fp16 scale with additions, multiplications
and divisions only (IEEE-exact on every machine), so the decoder rebuilds the
encoder's tables bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ctxcomp.kernels.attention import Rope, apply_rope, rope_cos_sin

ZERO, LAPLACE, GAUSSIAN = 0, 1, 2
MAX_RANGE = 1 << 15  # a component's table spans [-range, range]; beyond: escapes
_RANGE_SCALES = 10.0  # table half-width in scales (a Laplace tail beyond it: e^-10)
_MAX_SCALE = 4096.0  # fp16-safe; wider tables would pass MAX_RANGE anyway
_FIT_QUANTILE = 0.995  # models are fitted to the codes below this magnitude quantile


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


def coefficients(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, step: float) -> torch.Tensor:
    """x [L, H, S, D] -> integer codes [L, C, S] (component-major: each component's tokens together)."""
    return torch.round(transformed(x, matrix, offset) / step).to(torch.int32).transpose(1, 2).contiguous()


def reconstruct(codes: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor, step: float, heads: int) -> torch.Tensor:
    """codes [L, C, S] -> x [L, H, S, D] (fp32)."""
    layers, channels, seq = codes.shape
    coeff = codes.transpose(1, 2).float() * step + offset[:, None, :]
    return torch.bmm(coeff, inverse).view(layers, seq, heads, channels // heads).permute(0, 2, 1, 3).contiguous()


def _table(family: int, scale: float) -> tuple[int, np.ndarray]:
    """(range r, unnormalized probabilities of -r..r) for one component; exact arithmetic only."""
    width = int(min(np.ceil(np.float64(scale) * _RANGE_SCALES) + 1, MAX_RANGE))
    if family == LAPLACE:  # p(n) ~ theta^|n|
        theta = np.float64(scale) / (np.float64(scale) + 1.0)
        half = np.concatenate(([1.0], np.cumprod(np.full(width, theta))))
    else:  # p(n) ~ rho^(n^2): ratios p(n+1)/p(n) = rho^(2n+1)
        var = np.float64(scale) * np.float64(scale)
        rho = var / (var + 0.5)
        ratios = np.cumprod(np.concatenate(([rho], np.full(width - 1, rho * rho))))
        half = np.concatenate(([1.0], np.cumprod(ratios)))
    return width, np.concatenate((half[:0:-1], half))


@functools.lru_cache(maxsize=8192)
def _model(family: int, scale: float) -> tuple[int, object]:
    """(range, constriction model) of one (family, fp16 scale): blobs repeat a few thousand of
    them across tens of thousands of components, so each is built once per process."""
    import constriction

    width, probs = _table(family, scale)
    return width, constriction.stream.model.Categorical(probs, perfect=False)


def _upper_quantile(magnitude: np.ndarray, q: float) -> np.ndarray:
    """Per row of magnitude [N, S] (int), numpy's default (linear) q-quantile as [N, 1] float64,
    from a partition of the integers rather than np.quantile's float sort."""
    position = q * (magnitude.shape[1] - 1)
    lo, hi = int(np.floor(position)), int(np.ceil(position))
    parted = np.partition(magnitude, (lo, hi) if hi != lo else lo, axis=1)
    below, above = parted[:, lo].astype(np.float64), parted[:, hi].astype(np.float64)
    return (below + (above - below) * (position - lo))[:, None]


def _fit(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of codes [N, S]: the cheaper family (ZERO when all zero) and its fp16 scale.

    Both families are fitted by moments to the codes below the _FIT_QUANTILE of magnitude
    (a few outliers go to escapes instead) and compared by their ideal code length.
    """
    count, length = codes.shape
    if length == 0:
        return np.zeros(count, dtype=np.uint8), np.zeros(count, dtype=np.float16)
    absolute = np.abs(codes)
    limit = _upper_quantile(absolute, _FIT_QUANTILE)
    magnitude = absolute.astype(np.float64)
    bulk = magnitude <= limit
    kept = np.maximum(bulk.sum(1), 1)
    mean_abs = np.maximum((magnitude * bulk).sum(1) / kept, 1e-9)
    rms = np.sqrt((magnitude**2 * bulk).sum(1) / kept)
    theta = (np.sqrt(1.0 + mean_abs**2) - 1.0) / mean_abs  # ML fit of p(n) ~ theta^|n|
    laplace = np.clip(theta / (1.0 - theta), 0.05, _MAX_SCALE).astype(np.float16)  # stored as s: theta = s / (s + 1)
    gaussian = np.clip(rms, 0.05, _MAX_SCALE).astype(np.float16)
    # Ideal code lengths (bits) of the bulk under each model, from the stored (fp16) scales.
    s_l = laplace.astype(np.float64)
    theta = s_l / (s_l + 1.0)
    laplace_bits = -(mean_abs * np.log2(theta) + np.log2((1.0 - theta) / (1.0 + theta))) * kept
    var = gaussian.astype(np.float64) ** 2
    sigma2 = -0.5 / np.log(var / (var + 0.5))  # rho = exp(-1 / (2 sigma2))
    small = 1.0 + 2.0 * np.exp(-0.5 / sigma2) + 2.0 * np.exp(-2.0 / sigma2) + 2.0 * np.exp(-4.5 / sigma2)
    norm = np.where(sigma2 < 0.4, small, np.sqrt(2.0 * np.pi * sigma2))
    gaussian_bits = (rms**2 / (2.0 * sigma2) / np.log(2.0) + np.log2(norm)) * kept
    families = np.where(laplace_bits <= gaussian_bits, LAPLACE, GAUSSIAN).astype(np.uint8)
    scales = np.where(families == LAPLACE, laplace, gaussian).astype(np.float16)
    zero = ~codes.any(axis=1)
    families[zero], scales[zero] = ZERO, 0
    return families, scales


@dataclass(frozen=True)
class CodedComponents:
    words: np.ndarray  # uint32 ANS words
    scales: np.ndarray  # fp16 [N]
    families: np.ndarray  # uint8 [N]
    escapes: np.ndarray  # int32, in coding order


def entropy_encode(codes: np.ndarray) -> CodedComponents:
    """codes [N, S] int32 (one row per component) -> ANS words plus per-component models."""
    import constriction

    families, scales = _fit(codes)
    coded_rows = np.flatnonzero(families != ZERO)
    models = [_model(int(families[row]), float(scales[row])) for row in coded_rows]
    widths = np.zeros(codes.shape[0], dtype=np.int64)
    widths[coded_rows] = [width for width, _ in models]
    edge = (np.abs(codes) >= widths[:, None]) & (widths[:, None] > 0)
    escapes = codes[edge].astype(np.int32)  # row by row, each row in order: the decoder's order
    symbols = (np.clip(codes, -widths[:, None], widths[:, None]) + widths[:, None]).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    for row, (_, model) in zip(coded_rows[::-1], models[::-1]):  # a stack: the decoder pops the first row first
        coder.encode_reverse(symbols[row], model)
    return CodedComponents(coder.get_compressed(), scales, families, escapes)


def entropy_decode(coded: CodedComponents, length: int) -> np.ndarray:
    """The inverse of entropy_encode: codes [N, length] int32."""
    import constriction

    count = len(coded.families)
    out = np.zeros((count, length), dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(coded.words, dtype=np.uint32))
    escape_at = 0
    for row in range(count):
        family = int(coded.families[row])
        if family == ZERO:
            continue
        width, model = _model(family, float(coded.scales[row]))
        values = coder.decode(model, length).astype(np.int32) - width
        edge = np.abs(values) >= width
        if edge.any():
            wanted = int(edge.sum())
            if escape_at + wanted > len(coded.escapes):
                raise ValueError("transform codec: escape list shorter than the coded stream says")
            values[edge] = coded.escapes[escape_at : escape_at + wanted]
            escape_at += wanted
        out[row] = values
    if escape_at != len(coded.escapes):
        raise ValueError("transform codec: escape list longer than the coded stream says")
    return out
