"""From a prefill to blob bytes and back into a transformers cache for the same model."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from ctxcomp.errors import NotAvailable
from ctxcomp.kv import blob
from ctxcomp.kv.architectures import rope_theta_of
from ctxcomp.kv.prefill import PrefillResult


@functools.lru_cache(maxsize=1)
def default_kv_transform() -> Any:
    """The shipped (or CTXCOMP_KV_TRANSFORM) transform for library calls without a hub, loaded
    once: its inverse matrices are computed on first use and are costly to redo per blob."""
    from ctxcomp import models

    return models.load_kv_transform()


def kv_transform_for(llm: Any, transform: Any = None) -> Any:
    """The "transform" codec's KvTransform checked against this LLM (default: the shipped one,
    loaded here; a server passes its hub's, so CTXCOMP_KV_TRANSFORM and hub overrides apply).
    NotAvailable when it was calibrated for another LLM."""
    if transform is None:
        transform = default_kv_transform()
    if transform.llm_fingerprint != llm.fingerprint:
        raise NotAvailable(
            f"the KV transform was calibrated for {transform.meta.get('llm_id', '?')} (fingerprint "
            f"{transform.llm_fingerprint[:12]}), not for this LLM ({llm.fingerprint[:12]}); run "
            "`python -m training.calibrate_kv_transform` and set CTXCOMP_KV_TRANSFORM"
        )
    return transform


def blob_from_prefill(
    result: PrefillResult,
    llm: Any,
    token_ids: Sequence[int],
    *,
    codec: blob.Codec = "fp16",
    zstd_level: int | None = None,
    transform: Any = None,
) -> bytes:
    """llm: a ctxcomp.models.LoadedLLM (model, tokenizer, fingerprint); transform: codec
    "transform"'s KvTransform (default: the shipped one)."""
    first = result.keys[0]
    meta = blob.BlobMeta(
        model_fingerprint=llm.fingerprint,
        model_id=llm.path.name,
        layers=len(result.keys),
        kv_heads=first.shape[-3],
        head_dim=first.shape[-1],
        tokens=first.shape[-2],
        token_ids_sha256=blob.token_ids_digest(token_ids),
        start_pos=result.start_pos,
        rope_theta=rope_theta_of(llm.model.config),
        **blob.rope_fields(result.rope),
    )
    checked = kv_transform_for(llm, transform) if codec == "transform" else None
    return blob.encode(result.keys, result.values, meta, codec=codec, zstd_level=zstd_level, transform=checked)


def cache_from_blob(data: bytes, llm: Any, transform: Any = None) -> tuple[Any, blob.BlobMeta]:
    """A DynamicCache for llm, on the device its weights are on, from blob bytes; refuses
    blobs of other models or corrupt ones."""
    from transformers import DynamicCache

    keys, values, meta = blob.decode(
        data, expect_fingerprint=llm.fingerprint, transform=lambda: kv_transform_for(llm, transform)
    )
    device = next(llm.model.parameters()).device
    keys, values = keys.to(device), values.to(device)
    cache = DynamicCache()
    for layer in range(meta.layers):
        cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)
    return cache, meta
