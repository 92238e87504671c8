"""The KV transform: per-layer linear maps under which the downstream LLM's K/V are cheap to code.

Transform coding of the KV cache (KVTC, Staniszewski et al. 2025): decorrelate
each layer's keys (before RoPE) and values across all KV heads with a basis
calibrated once per model, quantize the coefficients with one uniform step and
entropy-code them. Our basis is PCA in the model's own sensitivity metric:
before PCA, K and V are multiplied by the square root of the Fisher information
of the next-token distribution with respect to them (measured by
`calibrate_kv_transform.py` on SQuAD questions), so one step size spends the
bits where the answer token is sensitive, across components, layers, K and V.

Stored tensors, per role r in {key, value}:
  r_matrix [L, C, C] fp16 and r_matrix_scale [L] fp32: the map T = matrix * scale
  r_offset [L, C] fp32: coefficients are x @ T - offset, with x [S, C] and
  C = kv_heads * head_dim (heads concatenated).
Encoder and decoder use exactly these values; the inverse is computed from them.

The same folder may hold `head_pca.safetensors`, the per-head bases of the "headpca"
codec (HeadBases): per layer and KV head, a [D, D] map in the same Fisher metric
(the block of each head only, so a token costs D*D multiply-adds per head instead
of C*C per layer), its offset and each component's calibrated standard deviation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

TRANSFORM_DIR = Path(__file__).resolve().parent / "kv_transform"
WEIGHTS = "transform.safetensors"
HEAD_WEIGHTS = "head_pca.safetensors"


@dataclass(frozen=True)
class HeadBases:
    """Per-head bases of the "headpca" codec: coefficients of head h's row x [D] are
    x @ matrix[l, h] - offset[l, h], components by falling calibrated std."""

    key_matrix: torch.Tensor  # [L, H, D, D] fp32 (keys before RoPE)
    key_offset: torch.Tensor  # [L, H, D]
    key_std: torch.Tensor  # [L, H, D]: each component's std on the calibration text
    value_matrix: torch.Tensor
    value_offset: torch.Tensor
    value_std: torch.Tensor
    step: float  # the default quantization step
    digest: str = ""  # SHA-256 of head_pca.safetensors: blobs name the bases they were coded with

    @cached_property
    def key_inverse(self) -> torch.Tensor:
        return inverse_per_layer(self.key_matrix.flatten(0, 1)).view_as(self.key_matrix)

    @cached_property
    def value_inverse(self) -> torch.Tensor:
        return inverse_per_layer(self.value_matrix.flatten(0, 1)).view_as(self.value_matrix)

    @cached_property
    def key_mean(self) -> torch.Tensor:
        """[L, H, D]: the offset mapped back (what a token whose coefficients are all zero decodes to)."""
        return torch.einsum("lhj,lhjd->lhd", self.key_offset, self.key_inverse)

    @cached_property
    def value_mean(self) -> torch.Tensor:
        return torch.einsum("lhj,lhjd->lhd", self.value_offset, self.value_inverse)


@dataclass(frozen=True)
class KvTransform:
    key_matrix: torch.Tensor  # [L, C, C] fp32 (the fp16-stored matrix times its layer scale)
    key_offset: torch.Tensor  # [L, C]
    value_matrix: torch.Tensor
    value_offset: torch.Tensor
    meta: dict[str, Any] = field(compare=False)  # config.json: LLM fingerprint, default step, calibration figures
    digest: str = ""  # SHA-256 of the weights file: blobs name the transform they were coded with
    heads: HeadBases | None = field(default=None, compare=False)  # the "headpca" codec's, when calibrated

    @property
    def llm_fingerprint(self) -> str:
        return str(self.meta.get("llm_fingerprint", ""))

    @property
    def step(self) -> float:
        return float(self.meta["step"])

    @property
    def layers(self) -> int:
        return self.key_matrix.shape[0]

    @property
    def channels(self) -> int:
        return self.key_matrix.shape[-1]

    @cached_property
    def key_inverse(self) -> torch.Tensor:
        return inverse_per_layer(self.key_matrix)

    @cached_property
    def value_inverse(self) -> torch.Tensor:
        return inverse_per_layer(self.value_matrix)


def inverse_per_layer(matrices: torch.Tensor) -> torch.Tensor:
    """[L, C, C] inverses, one layer at a time. A batched torch.linalg.inv nests MKL's LAPACK
    threads inside torch's own; after torch.set_num_threads(n > 1) (which `ctxcomp serve`
    and `batch` call) that deadlocks on torch 2.13 CPU wheels ("DLASWP parameter 6" errors)."""
    return torch.stack([torch.linalg.inv(m.double()) for m in matrices]).float()


def _split(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, C, C] -> fp16 matrix with entries in [-1, 1] and an fp32 scale per layer."""
    scale = matrix.abs().amax(dim=(1, 2)).float()
    return (matrix / scale[:, None, None]).half().contiguous(), scale.contiguous()


def save(
    key_matrix: torch.Tensor, key_offset: torch.Tensor, value_matrix: torch.Tensor, value_offset: torch.Tensor,
    meta: dict[str, Any], folder: Path,
) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    key_half, key_scale = _split(key_matrix)
    value_half, value_scale = _split(value_matrix)
    tensors = {
        "key_matrix": key_half, "key_matrix_scale": key_scale, "key_offset": key_offset.float().contiguous(),
        "value_matrix": value_half, "value_matrix_scale": value_scale, "value_offset": value_offset.float().contiguous(),
    }
    save_file(tensors, folder / WEIGHTS)
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(folder: Path = TRANSFORM_DIR) -> KvTransform:
    from safetensors.torch import load_file

    weights = folder / WEIGHTS
    tensors = load_file(weights)
    meta = json.loads((folder / "config.json").read_text())

    def matrix(role: str) -> torch.Tensor:
        return tensors[f"{role}_matrix"].float() * tensors[f"{role}_matrix_scale"][:, None, None]

    return KvTransform(
        key_matrix=matrix("key"), key_offset=tensors["key_offset"],
        value_matrix=matrix("value"), value_offset=tensors["value_offset"],
        meta=meta, digest=hashlib.sha256(weights.read_bytes()).hexdigest(), heads=load_heads(folder, meta),
    )


def save_heads(bases: dict[str, torch.Tensor], folder: Path) -> None:
    """bases: {key,value}_{matrix,offset,std} as HeadBases holds them."""
    from safetensors.torch import save_file

    save_file({name: tensor.float().contiguous() for name, tensor in bases.items()}, folder / HEAD_WEIGHTS)


def load_heads(folder: Path, meta: dict[str, Any]) -> HeadBases | None:
    from safetensors.torch import load_file

    weights = folder / HEAD_WEIGHTS
    if not weights.exists():
        return None
    tensors = load_file(weights)
    return HeadBases(**tensors, step=float(meta["head_step"]), digest=hashlib.sha256(weights.read_bytes()).hexdigest())
