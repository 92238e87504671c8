"""KV where vLLM finds it: the context's chunks written exactly as LMCache stores them.

A vLLM (or SGLang) server with the LMCache connector looks up a prompt's KV in chunks of
`chunk_size` tokens (256), each named by a chained hash of every token up to its end, and
loads the chunks it finds instead of prefilling them. This module writes the compressed
context's chunks into LMCache's `fs://` remote backend, so such a server skips their prefill
the first time it sees a prompt that starts with the context. It targets one pinned version
(LMCACHE_VERSION) and refuses others: each detail below was read from that version's source.

  hash    vLLM's sha256_cbor (SHA-256 of canonical CBOR): the chain starts at
          sha256_cbor(PYTHONHASHSEED as a string), as vllm.v1.core.kv_cache_utils.init_none_hash;
          chunk i hashes (previous, token ids of chunk i, ()); LMCache folds each digest to its
          first 8 bytes, big-endian (token_database._normalize_hash_to_int). Only full chunks are
          stored (LMCache's save_unfull_chunk is off by default): a partial tail never matches a
          longer prompt's chunk anyway.
  key     "model@world_size@worker_id@<chunk hash hex>@<kv dtype>" (utils.CacheEngineKey.to_string)
  layout  KV_2LTD: [2 (K, V), layers, tokens, kv_heads*head_dim] in the engine's KV dtype, K after
          RoPE, heads split across tensor-parallel workers as vLLM shards them (contiguous)
  serde   naive: the tensor's bytes
  framing FSConnector: one file "<key with '/' as '-SEP-'>.data" holding RemoteMetadata (7 native
          int32: byte length, format, dtype code, 4 shape dims) then the bytes; written to
          "<name>.tmp" and renamed, as LMCache does

The same files feed prefix reuse here too: a context whose leading chunks are already there
prefills only the rest (ctxcomp.kv.chunks). LMCache's records carry no checksum; a record whose
framing does not match the model is deleted and recomputed, never served.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import parse_qs, urlparse

import cbor2
import torch

from ctxcomp.errors import StoreUnavailable
from ctxcomp.kv.architectures import head_dim_of
from ctxcomp.kv.store import write_atomically

if TYPE_CHECKING:
    from ctxcomp.kv.prefill import PrefillResult
    from ctxcomp.models.registry import LoadedLLM

LMCACHE_VERSION = "0.5.6"
SCHEME = "lmcache+fs"
KV_2LTD = 1  # lmcache.v1.memory_management.MemoryFormat.KV_2LTD
HEADER = struct.Struct("<7i")  # RemoteMetadata for one KV group: length, fmt, dtype, shape[4]
# LMCache's key spelling of each dtype, and its protocol.DTYPE_TO_INT code.
KV_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "bfloat16": (torch.bfloat16, 3),
    "half": (torch.float16, 2),
    "float": (torch.float32, 4),
}
HASH_ALGORITHMS = ("sha256_cbor",)

Chunk = tuple[list[torch.Tensor], list[torch.Tensor]]  # per-layer K, V [H, S, D]


@dataclass(frozen=True)
class LMCacheLayout:
    """What a vLLM+LMCache deployment must agree on to find the chunks (its LMCache config
    and environment): every field changes the key or the bytes."""

    model_name: str  # vLLM's model name (its --model, e.g. "meta-llama/Llama-3.1-8B-Instruct")
    hash_seed: str  # PYTHONHASHSEED of the vLLM processes; unset there means random keys
    kv_dtype: str = "bfloat16"  # the engine's KV cache dtype
    chunk_size: int = 256  # LMCache chunk_size
    world_size: int = 1  # vLLM's tensor-parallel size (LMCache keys by the whole world size; no pipeline parallelism)
    hash_algorithm: str = "sha256_cbor"  # LMCache pre_caching_hash_algorithm
    version: str = LMCACHE_VERSION

    def __post_init__(self) -> None:
        if self.version != LMCACHE_VERSION:
            raise ValueError(f"LMCache {self.version} is not supported: chunks are written in LMCache {LMCACHE_VERSION}'s format")
        if not self.model_name:
            raise ValueError("LMCache chunks need the model name vLLM serves (model=...)")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"unknown LMCache KV dtype {self.kv_dtype!r}; valid: {', '.join(KV_DTYPES)}")
        if self.hash_algorithm not in HASH_ALGORITHMS:
            raise ValueError(
                f"LMCache hash {self.hash_algorithm!r} is not supported; valid: {', '.join(HASH_ALGORITHMS)} "
                "(LMCache's default 'builtin' is Python's per-process hash(): no other process can reproduce it)"
            )
        if self.chunk_size < 1 or self.world_size < 1:
            raise ValueError("LMCache chunk_size and world_size must be positive")


def sha256_cbor(value: Any) -> bytes:
    """vLLM's sha256_cbor: SHA-256 over canonical CBOR."""
    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


def _folded(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


def chunk_hashes(token_ids: Sequence[int], layout: LMCacheLayout) -> list[int]:
    """LMCache's chained hash of every full chunk of token_ids, in order."""
    hashes, previous = [], _folded(sha256_cbor(layout.hash_seed))
    size = layout.chunk_size
    for start in range(0, len(token_ids) - size + 1, size):
        previous = _folded(sha256_cbor((previous, tuple(int(t) for t in token_ids[start : start + size]), ())))
        hashes.append(previous)
    return hashes


def cache_key(layout: LMCacheLayout, chunk_hash: int, worker_id: int) -> str:
    """LMCache's CacheEngineKey.to_string() (no tags)."""
    return f"{layout.model_name}@{layout.world_size}@{worker_id}@{chunk_hash:x}@{layout.kv_dtype}"


def file_name(key: str) -> str:
    """FSConnector's file name of a key."""
    return key.replace("/", "-SEP-") + ".data"


def encode_chunk(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], kv_dtype: str) -> bytes:
    """One worker's record: per-layer K, V [H, T, D] as RemoteMetadata + KV_2LTD bytes."""
    dtype, code = KV_DTYPES[kv_dtype]
    kv = torch.stack([
        torch.stack([t.transpose(0, 1).reshape(t.shape[1], -1) for t in part]) for part in (keys, values)
    ]).to(dtype).contiguous()
    payload = kv.view(torch.uint8).numpy().tobytes()
    return HEADER.pack(len(payload), KV_2LTD, code, *kv.shape) + payload


def expected_header(kv_dtype: str, layers: int, heads: int, head_dim: int, tokens: int) -> tuple[int, ...]:
    """The RemoteMetadata fields of a record of this shape; its first is the payload's size."""
    dtype, code = KV_DTYPES[kv_dtype]
    return (2 * layers * tokens * heads * head_dim * dtype.itemsize, KV_2LTD, code, 2, layers, tokens, heads * head_dim)


def decode_chunk(data: bytes, kv_dtype: str, layers: int, heads: int, head_dim: int, tokens: int) -> Chunk:
    """The per-layer float32 K, V [H, T, D] of one worker's record; ValueError unless its
    framing is exactly what this model and layout produce."""
    header = expected_header(kv_dtype, layers, heads, head_dim, tokens)
    if len(data) != HEADER.size + header[0] or HEADER.unpack_from(data) != header:
        raise ValueError("LMCache record: not this model's chunk (framing, dtype or shape differ)")
    dtype = KV_DTYPES[kv_dtype][0]
    kv = torch.frombuffer(bytearray(data[HEADER.size :]), dtype=torch.uint8).view(dtype).reshape(header[3:]).float()
    per_layer = kv.reshape(2, layers, tokens, heads, head_dim).transpose(2, 3)
    return list(per_layer[0]), list(per_layer[1])


class LMCacheStore:
    """LMCache's fs:// remote backend under `root`, as a chunk store for ctxcomp.kv.chunks.

    A chunk's store key is its chained hash in hex; on disk there is one record per
    tensor-parallel worker, each holding that worker's contiguous share of the KV heads.
    """

    def __init__(self, root: Path, layout: LMCacheLayout) -> None:
        self.root = root
        self.layout = layout
        self.url = f"{SCHEME}://{root}"
        self.chunk_tokens = layout.chunk_size
        root.mkdir(parents=True, exist_ok=True)

    def check_model(self, llm: LoadedLLM) -> None:
        """ValueError unless the LLM's KV heads split evenly over the workers."""
        heads = llm.model.config.num_key_value_heads
        if heads % self.layout.world_size:
            raise ValueError(f"the LLM's {heads} KV heads do not split evenly over world_size={self.layout.world_size}")

    def keys(self, token_ids: Sequence[int]) -> list[str]:
        return [f"{h:x}" for h in chunk_hashes(token_ids, self.layout)]

    def cache_keys(self, key: str) -> list[str]:
        """LMCache's key string of each worker's record of a chunk."""
        return [cache_key(self.layout, int(key, 16), worker) for worker in range(self.layout.world_size)]

    def _paths(self, key: str) -> list[Path]:
        return [self.root / file_name(name) for name in self.cache_keys(key)]

    def _shape(self, llm: LoadedLLM, tokens: int) -> tuple[int, int, int, int]:
        config = llm.model.config
        return config.num_hidden_layers, config.num_key_value_heads // self.layout.world_size, head_dim_of(config), tokens

    def has(self, key: str, llm: LoadedLLM) -> bool:
        """Every worker's record is there and framed for this model (header and size; the
        bytes are not read). A badly framed one is deleted."""
        expected = expected_header(self.layout.kv_dtype, *self._shape(llm, self.chunk_tokens))
        for path in self._paths(key):
            try:
                with path.open("rb") as handle:
                    header = handle.read(HEADER.size)
                    framed = len(header) == HEADER.size and HEADER.unpack(header) == expected
                    framed = framed and os.fstat(handle.fileno()).st_size == HEADER.size + expected[0]
            except FileNotFoundError:
                return False
            except OSError as err:
                raise StoreUnavailable(f"KV store (lmcache) could not read a chunk: {err.strerror or type(err).__name__}") from err
            if not framed:
                path.unlink(missing_ok=True)
                return False
        return True

    def load(self, key: str, llm: LoadedLLM, token_ids: Sequence[int], start_pos: int) -> tuple[Chunk | None, str]:
        """A stored chunk and "hit"; or None and "miss", or "corrupt" (deleted)."""
        shards, paths = [], self._paths(key)
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None, "miss"
            except OSError as err:
                raise StoreUnavailable(f"KV store (lmcache) could not read a chunk: {err.strerror or type(err).__name__}") from err
            try:
                shards.append(decode_chunk(data, self.layout.kv_dtype, *self._shape(llm, len(token_ids))))
            except ValueError:
                path.unlink(missing_ok=True)
                return None, "corrupt"
        layers = range(len(shards[0][0]))
        return ([torch.cat([s[0][i] for s in shards]) for i in layers], [torch.cat([s[1][i] for s in shards]) for i in layers]), "hit"

    def save(self, key: str, llm: LoadedLLM, part: PrefillResult, token_ids: Sequence[int]) -> int:
        """Write one chunk (a PrefillResult of its tokens); the bytes written."""
        share = part.keys[0].shape[1] // self.layout.world_size
        written = 0
        for worker, path in enumerate(self._paths(key)):
            heads = slice(worker * share, (worker + 1) * share)
            data = encode_chunk([k[0, heads] for k in part.keys], [v[0, heads] for v in part.values], self.layout.kv_dtype)
            # 0644: the vLLM process reading it may run as another user, as with LMCache's own files
            write_atomically(path, data, "KV store (lmcache) could not write a chunk", mode=0o644)
            written += len(data)
        return written


def open_lmcache_store(url: str) -> LMCacheStore:
    """lmcache+fs:///path?model=NAME&hash_seed=0[&kv_dtype=bfloat16&chunk_size=256&world_size=1
    &hash_algorithm=sha256_cbor&version=0.5.6]: the path is LMCache's remote_url fs:///path."""
    parsed = urlparse(url)
    if parsed.scheme != SCHEME or not parsed.path:
        raise ValueError(f"an LMCache store URL looks like {SCHEME}:///path?model=NAME&hash_seed=0, not {url!r}")
    query = {name: values[-1] for name, values in parse_qs(parsed.query, keep_blank_values=True).items()}
    fields = {"model": "model_name", "hash_seed": "hash_seed", "kv_dtype": "kv_dtype", "chunk_size": "chunk_size",
              "world_size": "world_size", "hash_algorithm": "hash_algorithm", "version": "version"}
    unknown = sorted(set(query) - set(fields))
    if unknown:
        raise ValueError(f"unknown LMCache store option(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    if "model" not in query or "hash_seed" not in query:
        raise ValueError("an LMCache store needs model=<the model name vLLM serves> and "
                         "hash_seed=<the PYTHONHASHSEED the vLLM processes run with>")
    options: dict[str, Any] = {fields[name]: value for name, value in query.items()}
    for number in ("chunk_size", "world_size"):
        if number in options:
            options[number] = int(options[number])
    return LMCacheStore(Path(parsed.path), LMCacheLayout(**options))
