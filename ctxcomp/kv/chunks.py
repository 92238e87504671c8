"""Prefix reuse across requests and processes: the KV of a context in chained, content-addressed chunks.

A context's token ids are cut into chunks of `chunk_tokens` (256 by default, as LMCache);
chunk i's key is SHA-256 over the previous chunk's key and chunk i's token ids (the first
over the model fingerprint), so a key names a chunk *and everything before it*: two contexts
that share their first N full chunks share those N keys, in any process on any machine.

  lookup   the longest run of stored chunks from the start; each is checked (format, checksum,
           model, its token ids, its position) and a bad one is deleted and ends the run, so
           it is recomputed, never served
  prefill  only the tokens after that run, attending to the reused K/V
  store    every full chunk the store did not have

Chunks live in a ChunkStore: ctxcomp's own (BlobChunks: ordinary fp16 blobs, the same bound as
the default codec, in the same BlobStore as whole-context blobs, under keys that cannot meet
theirs) or LMCache's layout (ctxcomp.kv.lmcache), which vLLM's LMCache connector reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from ctxcomp.kv import blob
from ctxcomp.kv.architectures import model_rope
from ctxcomp.kv.handoff import blob_from_prefill
from ctxcomp.kv.prefill import PrefillResult, prefill
from ctxcomp.kv.store import BlobStore

if TYPE_CHECKING:
    from ctxcomp.models.registry import LoadedLLM

CHUNK_TOKENS = 256
CHUNK_CODEC = "fp16"


def chunk_keys(
    model_fingerprint: str, token_ids: Sequence[int], chunk_tokens: int = CHUNK_TOKENS, namespace: str = ""
) -> list[str]:
    """Chained keys of every full chunk of token_ids (a partial last chunk has none); a
    namespace (ctxcomp.kv.store.kv_namespace) starts the chain, so it is in every key."""
    start = f"ctxcomp-kv-chunk-v1\0{model_fingerprint}\0{chunk_tokens}" + (f"\0{namespace}" if namespace else "")
    keys, previous = [], hashlib.sha256(start.encode()).hexdigest()
    for start in range(0, len(token_ids) - chunk_tokens + 1, chunk_tokens):
        digest = blob.token_ids_digest(token_ids[start : start + chunk_tokens])
        previous = hashlib.sha256(f"{previous}\0{digest}".encode()).hexdigest()
        keys.append(previous)
    return keys


Chunk = tuple[list[torch.Tensor], list[torch.Tensor]]  # per-layer K, V [H, S, D]


class ChunkStore(Protocol):
    """Where chained chunks live: ctxcomp's own blob store (BlobChunks) or LMCache's
    layout (ctxcomp.kv.lmcache.LMCacheStore)."""

    chunk_tokens: int

    def keys(self, token_ids: Sequence[int]) -> list[str]: ...

    def has(self, key: str, llm: LoadedLLM) -> bool: ...

    def load(self, key: str, llm: LoadedLLM, token_ids: Sequence[int], start_pos: int) -> tuple[Chunk | None, str]: ...

    def save(self, key: str, llm: LoadedLLM, part: PrefillResult, token_ids: Sequence[int]) -> int: ...


class BlobChunks:
    """Chunks as ordinary fp16 blobs in a BlobStore, under chunk_keys."""

    def __init__(self, store: BlobStore, fingerprint: str, chunk_tokens: int = CHUNK_TOKENS, namespace: str = "") -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.chunk_tokens = chunk_tokens
        self.namespace = namespace

    def keys(self, token_ids: Sequence[int]) -> list[str]:
        return chunk_keys(self.fingerprint, token_ids, self.chunk_tokens, self.namespace)

    def has(self, key: str, llm: LoadedLLM) -> bool:
        return self.store.get(key) is not None

    def load(self, key: str, llm: LoadedLLM, token_ids: Sequence[int], start_pos: int) -> tuple[Chunk | None, str]:
        """A stored chunk and "hit"; or None and "miss", or "corrupt" (refused and deleted)."""
        data = self.store.get(key)
        if data is None:
            return None, "miss"
        try:
            k, v, meta = blob.decode(data, expect_fingerprint=self.fingerprint)
            if (meta.token_ids_sha256, meta.start_pos, meta.tokens) != (blob.token_ids_digest(token_ids), start_pos, len(token_ids)):
                raise blob.BlobRefused("KV chunk: not the tokens or position its key promises")
        except blob.BlobRefused:
            self.store.delete(key)
            return None, "corrupt"
        return (list(k.float()), list(v.float())), "hit"

    def save(self, key: str, llm: LoadedLLM, part: PrefillResult, token_ids: Sequence[int]) -> int:
        data = blob_from_prefill(part, llm, token_ids, codec=CHUNK_CODEC)
        self.store.put(key, data)
        return len(data)


@dataclass(frozen=True)
class ChunkedPrefill:
    """The whole context's prefill, and how much of it came from stored chunks."""

    result: PrefillResult
    chunk_tokens: int
    keys: tuple[str, ...]  # of every full chunk of the context
    reused: int  # of those, found intact in the store
    corrupt: int  # found but refused (deleted, recomputed)
    stored: int  # written by this call
    stored_bytes: int

    @property
    def chunks(self) -> int:
        return len(self.keys)

    @property
    def prefilled_tokens(self) -> int:
        return self.result.keys[0].shape[-2] - self.reused * self.chunk_tokens


def prefill_with_chunks(llm: LoadedLLM, token_ids: Sequence[int], chunks: ChunkStore) -> ChunkedPrefill:
    """Prefill token_ids, reusing the longest stored prefix of chunks and storing the new ones."""
    size = chunks.chunk_tokens
    keys = chunks.keys(token_ids)
    past_k: list[list[torch.Tensor]] = []
    past_v: list[list[torch.Tensor]] = []
    corrupt = 0
    usable = (len(token_ids) - 1) // size  # at least one token is prefilled: it gives the last logits
    for i, key in enumerate(keys[:usable]):
        chunk, status = chunks.load(key, llm, token_ids[i * size : (i + 1) * size], i * size)
        if chunk is None:
            corrupt = int(status == "corrupt")
            break
        past_k.append(chunk[0])
        past_v.append(chunk[1])
    reused = len(past_k)
    prefix = reused * size
    device = llm.model.device
    past = None
    if reused:
        layers = len(past_k[0])
        past = tuple(
            (torch.cat([c[layer] for c in past_k], dim=1).unsqueeze(0).to(device),
             torch.cat([c[layer] for c in past_v], dim=1).unsqueeze(0).to(device))
            for layer in range(layers)
        )
    rest = torch.tensor([list(token_ids[prefix:])], dtype=torch.long, device=device)
    new = prefill(llm.model, rest, start_pos=prefix, past=past)
    whole = PrefillResult(
        tuple(torch.cat((p[0], k), dim=2) for p, k in zip(past, new.keys)) if past else new.keys,
        tuple(torch.cat((p[1], v), dim=2) for p, v in zip(past, new.values)) if past else new.values,
        new.last_logits, model_rope(llm.model, 0, len(token_ids)), new.backend,
    )
    stored = stored_bytes = 0
    for i in range(reused, len(keys)):
        if i == usable and chunks.has(keys[i], llm):
            continue  # the aligned last chunk: stored, only not read (its last token had to be prefilled)
        start, end = i * size, (i + 1) * size
        part = PrefillResult(
            tuple(k[:, :, start:end] for k in whole.keys), tuple(v[:, :, start:end] for v in whole.values),
            whole.last_logits, model_rope(llm.model, start, size), whole.backend,
        )
        stored_bytes += chunks.save(keys[i], llm, part, token_ids[start:end])
        stored += 1
    return ChunkedPrefill(whole, size, tuple(keys), reused, corrupt, stored, stored_bytes)
