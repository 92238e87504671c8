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


@dataclass(frozen=True)
class KvTransform:
    key_matrix: torch.Tensor  # [L, C, C] fp32 (the fp16-stored matrix times its layer scale)
    key_offset: torch.Tensor  # [L, C]
    value_matrix: torch.Tensor
    value_offset: torch.Tensor
    meta: dict[str, Any] = field(compare=False)  # config.json: LLM fingerprint, default step, calibration figures
    digest: str = ""  # SHA-256 of the weights file: blobs name the transform they were coded with

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
        meta=meta, digest=hashlib.sha256(weights.read_bytes()).hexdigest(),
    )
