"""The "headpca" KV codec: per-head calibrated bases, a step per token by attention, rANS.

Transform coding as KVTC does it, made cheap enough for 2 CPU cores:
- the first tokens (attention sinks) and optionally the last ones are kept exactly (fp16);
- every other token's key (brought back before RoPE, where a channel's statistics do not
  depend on position) and value is mapped, per layer and KV head, by a [D, D] basis
  calibrated once in the model's Fisher metric (ctxcomp/models/kv_transform.py,
  HeadBases): D*D multiply-adds per head and token, where a basis across all heads
  costs (H*D)^2. Components whose calibrated spread is far below the finest step are
  not coded, and not computed past the most any head codes;
- coefficients are rounded with one step, scaled per token by a half-octave level:
  a token the context's queries attend to more gets a finer step (step_t proportional
  to w_t^-1/2 for attention weight w_t, which gives every token the same share of the
  attention-weighted squared error); without weights every level is 0;
- the integer coefficients are entropy-coded component by component with the
  "transform" codec's rANS coder and adaptive tables (ctxcomp.kv.transform), in its
  interleaved form (two states per stream, which the CPU runs side by side).
The basis products are batched matrix products (torch, MKL); RoPE in either direction and
the rounding are numba kernels run per layer on every core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ctxcomp.kv import rans  # first: it points numba at a writable cache before numba is imported

import numba  # noqa: E402,I001
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ctxcomp.kernels.attention import Rope  # noqa: E402
from ctxcomp.kv import transform as kv_transform  # noqa: E402
from ctxcomp.models.kv_transform import HeadBases  # noqa: E402
from ctxcomp.threads import on_cores  # noqa: E402

LEVELS = 6  # token steps range over step * 2**(level / 2), level in [-LEVELS, LEVELS]
DROP_BELOW = 0.125  # components with a calibrated std below this fraction of the finest step are not coded
_KERNEL = {"nogil": True, "cache": rans.CACHE, "fastmath": True, "error_model": "numpy"}


@dataclass(frozen=True)
class Plan:
    """What encoder and decoder agree on for one blob: which tokens are coded, each token's
    step level and how many leading components of each head are coded."""

    first: int  # tokens before `first` (sinks) and from `last` on (recent) are stored exactly
    last: int
    levels: np.ndarray  # int8 [last - first]
    components: np.ndarray  # uint8 [2, L, H]: keys, values

    @property
    def rows(self) -> int:
        """Rows per head in the coded array: the most components any head codes."""
        return int(self.components.max()) if self.components.size else 0


def plan(bases: HeadBases, step: float, first: int, last: int, attention: torch.Tensor | None) -> Plan:
    """The plan of a blob whose tokens first..last are coded with `step`, their levels from the
    attention [S] each token of the whole context receives (None: one step for all)."""
    levels = token_levels(None if attention is None else attention[first:last], last - first)
    return Plan(first, last, levels, coded_components(bases, step, levels))


def token_levels(weights: torch.Tensor | None, tokens: int) -> np.ndarray:
    """Half-octave step levels [tokens] int8 from attention weights [tokens] (mean attention each token
    receives): level = round(log2(mean / w)), so step_t ~ w_t^-1/2; zeros without weights."""
    if weights is None or tokens == 0:
        return np.zeros(tokens, dtype=np.int8)
    w = weights.double().clamp(min=1e-12)
    levels = torch.round(torch.log2(w.mean() / w)).clamp(-LEVELS, LEVELS)
    return levels.to(torch.int8).numpy()


def coded_components(bases: HeadBases, step: float, levels: np.ndarray) -> np.ndarray:
    """Components coded per role, layer and head [2, L, H] uint8: those up to the last one whose
    calibrated std reaches DROP_BELOW times the finest step this blob uses."""
    finest = step * 2.0 ** (float(levels.min()) / 2) if levels.size else step
    std = torch.stack((bases.key_std, bases.value_std))  # [2, L, H, D]
    above = std >= DROP_BELOW * finest
    index = torch.arange(1, std.shape[-1] + 1)
    return (above * index).amax(dim=-1).to(torch.uint8).numpy()


@numba.njit(**_KERNEL)
def _rotate(x, cos, sin, out):
    """Keys x [H, T, D] rotated by cos, sin [T, D/2] (rotate-half convention) into out [H, T, D] (any
    strides): RoPE, or its inverse with _rotation(inverse=True)'s tables."""
    heads, tokens, dim = x.shape
    half = dim // 2
    for h in range(heads):
        for t in range(tokens):
            for i in range(half):
                a, b = x[h, t, i], x[h, t, i + half]
                out[h, t, i] = a * cos[t, i] - b * sin[t, i]
                out[h, t, i + half] = b * cos[t, i] + a * sin[t, i]


@numba.njit(**_KERNEL)
def _quantise(coefficients, offset, components, scales, out):
    """coefficients [H, R, T] (x @ matrix, divided by the step), offset [H, R] (divided by the step),
    scales [T] (2**(-level/2)) -> out [H*R, T] int32: round((c - offset) * scale); 0 past a head's components."""
    heads, rows, tokens = coefficients.shape
    for h in range(heads):
        for j in range(rows):
            row = h * rows + j
            if j >= components[h]:
                for t in range(tokens):
                    out[row, t] = 0
                continue
            shift = offset[h, j]
            for t in range(tokens):
                out[row, t] = np.int32(np.floor((coefficients[h, j, t] - shift) * scales[t] + np.float32(0.5)))


def _rotation(rope: Rope, first: int, last: int, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [last - first, D/2] at the coded tokens' positions; the inverse rotation's (the angle
    negated) also divide out the model's cos/sin scaling (as ctxcomp.kv.transform.pre_rope_rows does)."""
    cos, sin = rope.half_tables(last)
    cos, sin = cos[first:], sin[first:]
    if inverse:
        cos, sin = cos / rope.attention_scaling**2, -sin / rope.attention_scaling**2
    return np.ascontiguousarray(cos.numpy()), np.ascontiguousarray(sin.numpy())


def _lap(timings: dict[str, float] | None, name: str, started: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + now - started
    return now


def encode(
    k: torch.Tensor, v: torch.Tensor, rope: Rope, bases: HeadBases, step: float, plan: Plan,
    timings: dict[str, float] | None = None,
) -> kv_transform.CodedComponents:
    """K (after RoPE) and V [L, H, S, D] -> the rANS-coded coefficients of tokens plan.first..plan.last;
    `timings` (optional) gets the seconds of "transform_quantise" and "entropy_code"."""
    started = time.perf_counter()
    layers, heads, _, dim = k.shape
    rows, tokens = plan.rows, plan.last - plan.first
    keys = torch.empty(layers, heads, tokens, dim)
    cos, sin = _rotation(rope, plan.first, plan.last, inverse=True)
    k_in, k_out = k.float().numpy(), keys.numpy()
    on_cores(lambda layer: _rotate(k_in[layer, :, plan.first : plan.last], cos, sin, k_out[layer]), layers)
    scales = (2.0 ** (-plan.levels.astype(np.float32) / 2)).astype(np.float32)
    codes = np.empty((2 * layers, heads * rows, tokens), dtype=np.int32)
    for role, (x, matrix, offset) in enumerate(((keys, bases.key_matrix, bases.key_offset),
                                                (v.float()[:, :, plan.first : plan.last], bases.value_matrix, bases.value_offset))):
        # [L, H, R, D] @ [L, H, D, T]: the coefficients component-major, as the entropy coder takes them
        coefficients = torch.matmul((matrix[..., :rows] / step).transpose(-1, -2), x.transpose(-1, -2)).numpy()
        shifts = np.ascontiguousarray((offset[..., :rows] / step).numpy())
        on_cores(lambda layer: _quantise(coefficients[layer], shifts[layer], plan.components[role, layer], scales,
                                         codes[role * layers + layer]), layers)
    started = _lap(timings, "transform_quantise", started)
    coded = kv_transform.entropy_encode(codes, interleaved=True)
    _lap(timings, "entropy_code", started)
    return coded


def decode(
    coded: kv_transform.CodedComponents, rope: Rope, bases: HeadBases, step: float, plan: Plan,
    k: torch.Tensor, v: torch.Tensor, timings: dict[str, float] | None = None,
) -> None:
    """Writes the coded tokens plan.first..plan.last of K (after RoPE) and V [L, H, S, D] fp32.
    Raises ValueError on a payload that does not decode."""
    started = time.perf_counter()
    layers, heads = k.shape[:2]
    rows, tokens = plan.rows, plan.last - plan.first
    codes = kv_transform.entropy_decode(coded, tokens, heads * rows, out_dtype=np.float32, interleaved=True)
    started = _lap(timings, "entropy_code", started)
    steps = torch.from_numpy((step * 2.0 ** (plan.levels.astype(np.float32) / 2)).astype(np.float32))[:, None]
    coded_rows = torch.from_numpy(codes).view(2 * layers, heads, rows, tokens).transpose(-1, -2)  # [2L, H, T, R]
    # sum_j code * step_t * inverse[j] = step_t * (codes @ inverse): the token's step scales the product's row
    keys = torch.matmul(coded_rows[:layers], bases.key_inverse[..., :rows, :]).mul_(steps).add_(bases.key_mean[:, :, None, :])
    values = torch.matmul(coded_rows[layers:], bases.value_inverse[..., :rows, :]).mul_(steps).add_(bases.value_mean[:, :, None, :])
    v[:, :, plan.first : plan.last] = values
    cos, sin = _rotation(rope, plan.first, plan.last, inverse=False)
    keys_np, out = keys.numpy(), k.numpy()
    on_cores(lambda layer: _rotate(keys_np[layer], cos, sin, out[layer, :, plan.first : plan.last]), layers)
    _lap(timings, "transform_quantise", started)
