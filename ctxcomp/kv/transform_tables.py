"""The "transform" codec's entropy model: a fixed set of tables and, per component, the one to code it with.

The set: a discrete Laplace and a discrete Gaussian at GRID scales each, every one
as integer frequencies for rANS (ctxcomp.kv.rans). It is built with additions,
multiplications, divisions and an exactly rounded sum only (IEEE-exact on every
machine), so the decoder has the encoder's tables bit for bit (a test pins them).

Per component (a row of integer coefficients), the encoder picks the cheaper family
fitted by moments, brings its scale to the grid and, for a scale above
LARGEST_SCALE, a shift: the values' low bits are coded uniformly, the rest with
the table. Only the encoder fits; the blob carries each row's table and shift.
Compiled by numba, imported only when a blob is coded.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ctxcomp.kv import rans  # first: it points numba at a writable cache before numba is imported

import numba  # noqa: E402,I001
import numpy as np  # noqa: E402

LAPLACE, GAUSSIAN = 1, 2
GRID = 60  # table scales per family: SMALLEST_SCALE * GRID_RATIO**j, j < GRID
SMALLEST_SCALE = 0.05
GRID_RATIO = 1.0905077326652577  # 2 ** (1 / 8): eight tables per doubling of the scale
LARGEST_SCALE = 8.0  # wider components are halved (one more low bit coded uniformly) until they fit
MAX_SHIFT = 16
FIT_SAMPLES = 512  # a row's table is fitted to about this many of its values (a strided sample)
_RANGE_SCALES = 10.0  # table half-width in scales (a Laplace tail beyond it: e^-10)


def _table_scales() -> list[float]:
    """The scales of the table set: SMALLEST_SCALE times GRID_RATIO**j, by repeated multiplication
    (IEEE-exact everywhere, unlike pow)."""
    scales = [SMALLEST_SCALE]
    for _ in range(GRID - 1):
        scales.append(scales[-1] * GRID_RATIO)
    return scales


def _probabilities(family: int, scale: float) -> tuple[int, np.ndarray]:
    """(half-width w, unnormalized probabilities of -w..w) of one table; exact arithmetic only."""
    width = int(np.ceil(np.float64(scale) * _RANGE_SCALES)) + 1
    if family == LAPLACE:  # p(n) ~ theta^|n|
        theta = np.float64(scale) / (np.float64(scale) + 1.0)
        half = np.concatenate(([1.0], np.cumprod(np.full(width, theta))))
    else:  # p(n) ~ rho^(n^2): ratios p(n+1)/p(n) = rho^(2n+1)
        var = np.float64(scale) * np.float64(scale)
        rho = var / (var + 0.5)
        ratios = np.cumprod(np.concatenate(([rho], np.full(width - 1, rho * rho))))
        half = np.concatenate(([1.0], np.cumprod(ratios)))
    return width, np.concatenate((half[:0:-1], half))


def _frequencies(probs: np.ndarray) -> np.ndarray:
    """Integer frequencies >= 1 summing to 1 << rans.PRECISION, the remainder on the mode.
    math.fsum is exactly rounded, so every machine gets the same integers."""
    total, spare = math.fsum(probs.tolist()), (1 << rans.PRECISION) - len(probs)
    freqs = 1 + np.floor(probs * spare / total).astype(np.int64)
    freqs[len(probs) // 2] += (1 << rans.PRECISION) - int(freqs.sum())
    return freqs


@dataclass(frozen=True)
class Tables:
    """The fixed table set, index (family - 1) * GRID + j: widths [T], starts / freqs [T, A], the
    encoder's division-free form of them (rans.encoder_tables) and the decoder's slot -> symbol
    lookup [T, 1 << PRECISION]."""

    widths: np.ndarray
    starts: np.ndarray
    freqs: np.ndarray
    coder: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    lookup: np.ndarray


@functools.cache
def table_set() -> Tables:
    scales = _table_scales()
    rows = [_probabilities(family, scale) for family in (LAPLACE, GAUSSIAN) for scale in scales]
    alphabet = max(len(probs) for _, probs in rows)
    widths = np.array([width for width, _ in rows], dtype=np.int32)
    starts = np.zeros((len(rows), alphabet), dtype=np.int32)
    freqs = np.zeros((len(rows), alphabet), dtype=np.int32)
    lookup = np.zeros((len(rows), 1 << rans.PRECISION), dtype=np.uint8)
    for index, (_, probs) in enumerate(rows):
        row_freqs = _frequencies(probs)
        freqs[index, : len(row_freqs)] = row_freqs
        starts[index, : len(row_freqs)] = np.concatenate(([0], np.cumsum(row_freqs)[:-1]))
        lookup[index] = np.repeat(np.arange(len(row_freqs), dtype=np.uint8), row_freqs)
    return Tables(widths, starts, freqs, rans.encoder_tables(freqs), lookup)


@numba.njit(error_model="numpy", **rans.JIT_OPTIONS)
def _row_table(codes: np.ndarray, chunk: int, column: int) -> tuple[int, int]:
    """(table index, shift) of row `column` of chunk `chunk` of codes [chunks, R, S]; (-1, 0) when all zero.

    The cheaper of a discrete Laplace and a discrete Gaussian, each fitted by moments to at most
    FIT_SAMPLES of the row's values with the outliers left out (they are coded as escapes),
    brought to the grid, a large scale by a shift of the values."""
    length = codes.shape[2]
    first = 0
    while first < length and codes[chunk, column, first] == 0:
        first += 1
    if first == length:
        return -1, 0
    stride = max(1, length // FIT_SAMPLES)
    total, samples = 0.0, 0
    for t in range(0, length, stride):
        total += abs(np.float64(codes[chunk, column, t]))
        samples += 1
    limit = 8.0 * total / samples + 2.0  # far in any fitted tail: beyond it values are outliers
    kept, sum_abs, sum_sq = 0, 0.0, 0.0
    for t in range(0, length, stride):
        magnitude = abs(np.float64(codes[chunk, column, t]))
        if magnitude <= limit:
            kept += 1
            sum_abs += magnitude
            sum_sq += magnitude * magnitude
    mean_abs = max(sum_abs / max(kept, 1), 1e-9)
    rms = max(np.sqrt(sum_sq / max(kept, 1)), 1e-9)
    theta = (np.sqrt(1.0 + mean_abs * mean_abs) - 1.0) / mean_abs  # ML fit of p(n) ~ theta^|n|
    theta = min(max(theta, 1e-6), 1.0 - 1e-9)
    laplace_bits = -(mean_abs * np.log2(theta) + np.log2((1.0 - theta) / (1.0 + theta)))
    sigma2 = 0.5 / np.log1p(0.5 / (rms * rms))  # rho = var / (var + 0.5) = exp(-1 / (2 sigma2))
    small = 1.0 + 2.0 * np.exp(-0.5 / sigma2) + 2.0 * np.exp(-2.0 / sigma2) + 2.0 * np.exp(-4.5 / sigma2)
    norm = small if sigma2 < 0.4 else np.sqrt(2.0 * np.pi * sigma2)
    gaussian_bits = rms * rms / (2.0 * sigma2) / np.log(2.0) + np.log2(norm)
    family, scale = (LAPLACE, theta / (1.0 - theta)) if laplace_bits <= gaussian_bits else (GAUSSIAN, rms)
    shift = 0
    while scale > LARGEST_SCALE and shift < MAX_SHIFT:
        scale /= 2.0
        shift += 1
    step = int(np.round(np.log(scale / SMALLEST_SCALE) / np.log(GRID_RATIO)))
    return (family - 1) * GRID + min(max(step, 0), GRID - 1), shift


@numba.njit(error_model="numpy", **rans.JIT_OPTIONS)
def fit_chunk(codes, chunk, tables, shifts) -> None:
    """Tables and shifts of chunk `chunk`'s rows of codes [chunks, R, S], in place (per row, chunk-major).

    (numba's cache checks only this file: a kernel here must not call one of another module.)"""
    rows = codes.shape[1]
    for column in range(rows):
        tables[chunk * rows + column], shifts[chunk * rows + column] = _row_table(codes, chunk, column)
