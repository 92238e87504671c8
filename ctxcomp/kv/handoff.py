"""From a prefill to blob bytes and back into a transformers cache for the same model."""

from __future__ import annotations

from typing import Any, Sequence

from ctxcomp.kv import blob
from ctxcomp.kv.prefill import PrefillResult, rope_params


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
    return blob.encode(result.keys, result.values, meta, codec=codec, zstd_level=zstd_level)


def cache_from_blob(data: bytes, llm: Any) -> tuple[Any, blob.BlobMeta]:
    """A DynamicCache for llm from blob bytes; refuses blobs of other models or corrupt ones."""
    from transformers import DynamicCache

    keys, values, meta = blob.decode(data, expect_fingerprint=llm.fingerprint)
    cache = DynamicCache()
    for layer in range(meta.layers):
        cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)
    return cache, meta
