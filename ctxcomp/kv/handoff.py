"""From a prefill to blob bytes and back into a transformers cache for the same model."""

from __future__ import annotations

from typing import Any, Sequence

from ctxcomp.errors import NotAvailable
from ctxcomp.kv import blob
from ctxcomp.kv.prefill import PrefillResult, rope_params


def kv_transform_for(llm: Any) -> Any:
    """The "transform" codec's KvTransform for this LLM; NotAvailable when none was calibrated for it."""
    from ctxcomp import models

    transform = models.load_kv_transform()
    if transform.llm_fingerprint != llm.fingerprint:
        raise NotAvailable(
            f"the KV transform was calibrated for {transform.meta.get('llm_id', '?')} (fingerprint "
            f"{transform.llm_fingerprint[:12]}), not for this LLM ({llm.fingerprint[:12]}); run "
            "`python -m ctxcomp.models.calibrate_kv_transform` and set CTXCOMP_KV_TRANSFORM"
        )
    return transform


def blob_from_prefill(
    result: PrefillResult,
    llm: Any,
    token_ids: Sequence[int],
    *,
    codec: blob.Codec = "fp16",
    zstd_level: int | None = None,
) -> bytes:
    """llm: a ctxcomp.models.LoadedLLM (model, tokenizer, fingerprint)."""
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
        rope_theta=rope_params(llm.model.config).theta,
    )
    transform = kv_transform_for(llm) if codec == "transform" else None
    return blob.encode(result.keys, result.values, meta, codec=codec, zstd_level=zstd_level, transform=transform)


def cache_from_blob(data: bytes, llm: Any) -> tuple[Any, blob.BlobMeta]:
    """A DynamicCache for llm from blob bytes; refuses blobs of other models or corrupt ones."""
    from transformers import DynamicCache

    keys, values, meta = blob.decode(data, expect_fingerprint=llm.fingerprint, transform=lambda: kv_transform_for(llm))
    cache = DynamicCache()
    for layer in range(meta.layers):
        cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)
    return cache, meta
