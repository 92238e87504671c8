"""The pipeline's KV stage: the downstream LLM's K/V for a compressed context, as a blob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ctxcomp.errors import InvalidRequest, ModelUnavailable, NotAvailable, quoted
from ctxcomp.hub import ModelHub
from ctxcomp.kv import blob
from ctxcomp.kv.architectures import adapter_for
from ctxcomp.kv.chunks import CHUNK_TOKENS, BlobChunks, prefill_with_chunks
from ctxcomp.kv.handoff import blob_from_prefill, kv_transform_for
from ctxcomp.kv.lmcache import SCHEME as LMCACHE_SCHEME
from ctxcomp.kv.lmcache import LMCacheStore, open_lmcache_store
from ctxcomp.kv.prefill import ATTENTION_QUERIES, prefill
from ctxcomp.kv.store import DEFAULT_RETRY_AFTER_S, DEFAULT_TIMEOUT_S, BlobStore, blob_key, open_store

if TYPE_CHECKING:
    from ctxcomp.models.registry import LoadedLLM

CODECS: tuple[str, ...] = tuple(blob.CODECS)  # one list of codecs: the blob module's registry


@dataclass(frozen=True)
class KvBlob:
    """A handle to one KV blob: its content key, size and (unless stored) its bytes."""

    key: str
    tokens: int
    codec: str
    size: int
    data: bytes | None  # None when only the store holds it
    store_lookup: str = ""  # with a store: "hit", "miss", or "corrupt" (a bad stored blob, replaced)
    reused_tokens: int = 0  # with a store, on a miss: leading tokens whose K/V came from stored chunks
    chunk_keys: tuple[str, ...] = ()  # with an LMCache store: the key of every chunk written or found
    note: str = ""


LMCACHE_CODEC = "lmcache"  # what a server with an LMCache store reports as the blob's codec


class KvTarget(Protocol):
    """Where the KV stage puts a context's K/V: blobs in ctxcomp's layout (returned, or in a blob
    store), or chunks in LMCache's layout for vLLM. The pipeline holds one and never asks which."""

    shared_namespace: bool  # one key space for every tenant: it cannot keep tenants apart

    def check(self, llm: LoadedLLM, codec: str, cache_salt: str) -> str:
        """The codec this target writes for a request asking `codec`; InvalidRequest otherwise."""
        ...

    def compute(self, hub: ModelHub, context: str, codec: str, *, zstd_level: int, chunk_tokens: int,
                templated: bool, namespace: str) -> KvBlob:
        ...


@dataclass(frozen=True)
class BlobTarget:
    """ctxcomp's blobs: returned with the response (`store` None) or kept in a blob store."""

    store: BlobStore | None = None
    shared_namespace: bool = False

    def check(self, llm: LoadedLLM, codec: str, cache_salt: str) -> str:
        codec = codec or "fp16"
        if codec not in CODECS:
            raise InvalidRequest("kv_codec", f"unknown codec {quoted(codec)}; valid: {', '.join(CODECS)}")
        return codec

    def compute(self, hub: ModelHub, context: str, codec: str, *, zstd_level: int, chunk_tokens: int,
                templated: bool, namespace: str) -> KvBlob:
        return compute_blob(hub, context, codec, self.store, zstd_level, chunk_tokens, namespace)


@dataclass(frozen=True)
class LMCacheTarget:
    """Chunks where a vLLM server with the LMCache connector finds them (ctxcomp.kv.lmcache); its
    keys are vLLM's, one namespace for all."""

    store: LMCacheStore
    shared_namespace: bool = True

    def check(self, llm: LoadedLLM, codec: str, cache_salt: str) -> str:
        if cache_salt:
            raise InvalidRequest("cache_salt", "this server writes LMCache chunks under vLLM's keys, one namespace for "
                                 "all: it cannot keep a salted context apart; send no cache_salt")
        if codec not in ("", LMCACHE_CODEC):
            raise InvalidRequest("kv_codec", f"this server writes KV as LMCache chunks ({self.store.layout.kv_dtype}); "
                                 "leave kv_codec empty")
        try:
            self.store.check_model(llm)
        except ValueError as err:
            raise InvalidRequest("return_kv", f"this server's LMCache store cannot hold this LLM's KV: {err}") from err
        return LMCACHE_CODEC

    def compute(self, hub: ModelHub, context: str, codec: str, *, zstd_level: int, chunk_tokens: int,
                templated: bool, namespace: str) -> KvBlob:
        return write_lmcache(hub.llm(), context, self.store, templated)


INLINE = BlobTarget()  # no store: blobs go back with the response


def open_kv_store(
    url: str, timeout_s: float = DEFAULT_TIMEOUT_S, retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    max_bytes: int | None = None,
) -> KvTarget:
    """The KV target of a store URL: LMCache's layout (lmcache+fs://) or ctxcomp's blob stores
    (file://, redis://); `max_bytes` caps a file store."""
    if url.startswith(f"{LMCACHE_SCHEME}:"):
        if max_bytes is not None:
            raise ValueError("an LMCache store's capacity is LMCache's to manage; --kv-store-max-bytes is for file stores")
        return LMCacheTarget(open_lmcache_store(url))
    return BlobTarget(open_store(url, timeout_s=timeout_s, retry_after_s=retry_after_s, max_bytes=max_bytes))


def check_kv_request(codec: str, model: str, hub: ModelHub, target: KvTarget | None = None, cache_salt: str = "") -> str:
    """The codec to use; InvalidRequest naming kv_codec / kv_model / cache_salt otherwise."""
    llm = hub.llm()
    adapter_for(llm.model.config)  # an architecture without an exact prefill is refused here, by name
    codec = (target or INLINE).check(llm, codec, cache_salt)
    if model and model not in (llm.fingerprint, llm.path.name):
        raise InvalidRequest("kv_model", f"this server computes KV for {llm.path.name} (fingerprint {llm.fingerprint[:12]}), not {quoted(model)}")
    if codec in CODECS and blob.CODECS[codec].needs_transform:
        try:
            kv_transform_for(llm, hub.kv_transform())
        except (NotAvailable, ModelUnavailable) as err:
            raise InvalidRequest("kv_codec", f"codec {quoted(codec)} is not available on this server: {err}") from err
    return codec


def compute_kv(
    hub: ModelHub, context: str, codec: str, target: KvTarget | None, zstd_level: int = 3,
    chunk_tokens: int = CHUNK_TOKENS, templated: bool = False, namespace: str = "",
) -> KvBlob:
    """The KV of `context` (no special tokens) with the hub's LLM, put where `target` keeps it
    (None: a blob returned with the response)."""
    return (target or INLINE).compute(hub, context, codec, zstd_level=zstd_level, chunk_tokens=chunk_tokens,
                                      templated=templated, namespace=namespace)


def compute_blob(
    hub: ModelHub, context: str, codec: str, store: BlobStore | None, zstd_level: int, chunk_tokens: int, namespace: str,
) -> KvBlob:
    """Prefill `context` and encode it as a blob; reuse a stored blob of the same key only after
    checking it (see `stored_blob`). With a store, a context without its own blob still reuses
    the stored chunks of its longest known prefix and prefills only the rest
    (ctxcomp.kv.chunks); chunk_tokens=0 keeps whole-context keys only. Every key is in
    `namespace` (ctxcomp.kv.store.kv_namespace): nothing is shared across namespaces."""
    import torch

    llm = hub.llm()
    ids = llm.tokenizer(context, add_special_tokens=False)["input_ids"]
    key = blob_key(llm.fingerprint, ids, codec, namespace)
    lookup = ""
    if store is not None:
        cached, lookup = stored_blob(store, key, llm.fingerprint, ids, codec)
        if cached is not None:
            return KvBlob(key, len(ids), codec, len(cached), None, lookup)
    if not ids:
        raise InvalidRequest("return_kv", "the compressed context is empty: there is no KV to compute")
    reused = 0
    if store is not None and chunk_tokens > 0:
        done = prefill_with_chunks(llm, ids, BlobChunks(store, llm.fingerprint, chunk_tokens, namespace))
        result, reused = done.result, done.reused * done.chunk_tokens
    else:
        queries = ATTENTION_QUERIES if codec in CODECS and blob.CODECS[codec].uses_attention else 0
        result = prefill(llm.model, torch.tensor([ids], device=llm.model.device), attention_queries=queries)
    transform = hub.kv_transform() if codec in CODECS and blob.CODECS[codec].needs_transform else None
    data = blob_from_prefill(result, llm, ids, codec=codec, zstd_level=zstd_level, transform=transform)  # type: ignore[arg-type]
    if store is not None:
        store.put(key, data)
        return KvBlob(key, len(ids), codec, len(data), None, lookup, reused)
    return KvBlob(key, len(ids), codec, len(data), data)


def write_lmcache(llm: LoadedLLM, context: str, store: LMCacheStore, templated: bool) -> KvBlob:
    """The context's full chunks in LMCache's layout, prefilling only those not there yet.

    The tokens are the ones vLLM sees when a prompt starts with this text: its completions
    API tokenizes a prompt with the tokenizer's special tokens (a BOS for Llama), its chat API
    renders the template (`templated`: the template holds them) and adds none. The tail after
    the last full chunk is not written: vLLM prefills it with the question.
    """
    ids = llm.tokenizer(context, add_special_tokens=not templated)["input_ids"]
    keys = store.keys(ids)
    names = tuple(name for key in keys for name in store.cache_keys(key))
    if not keys:
        note = f"the context is {len(ids)} tokens, shorter than one LMCache chunk ({store.chunk_tokens}): no chunk written"
        return KvBlob("", len(ids), LMCACHE_CODEC, 0, None, "miss", note=note)
    if all(store.has(key, llm) for key in keys):
        return KvBlob(keys[-1], len(ids), LMCACHE_CODEC, 0, None, "hit", len(keys) * store.chunk_tokens, names)
    done = prefill_with_chunks(llm, ids, store)
    lookup = "corrupt" if done.corrupt else "miss"
    return KvBlob(keys[-1], len(ids), LMCACHE_CODEC, done.stored_bytes, None, lookup, done.reused * done.chunk_tokens, names)


def stored_blob(store: BlobStore, key: str, fingerprint: str, ids: list[int], codec: str) -> tuple[bytes | None, str]:
    """The stored blob under `key` and "hit", or None and "miss" / "corrupt".

    A stored blob is served only when it is intact (format, size and the SHA-256 in its own
    header) and is the one the key promises (model, token ids, codec). Anything else is
    deleted, so the caller recomputes it and the next request finds a good one.
    """
    cached = store.get(key)
    if cached is None:
        return None, "miss"
    try:
        meta = blob.inspect(cached)
        promised = (meta.model_fingerprint, meta.token_ids_sha256, meta.codec) == (fingerprint, blob.token_ids_digest(ids), codec)
    except blob.BlobRefused:
        promised = False
    if not promised:
        store.delete(key)
        return None, "corrupt"
    return cached, "hit"
