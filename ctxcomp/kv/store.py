"""Where KV blobs live, behind one interface chosen by URL scheme.

    file:///var/cache/ctxcomp/kv   (default scheme; a plain path works too)
    redis://host:6379/0

Keys are content addresses: SHA-256 over the model fingerprint and the
token-id digest, so the same tokens for the same model give the same key in
any process on any machine (no Python hash(), no pickles, no timestamps).
A namespace (`kv_namespace`: the tenant and the request's cache_salt) is mixed
in when set, so only requests of one namespace ever share a key.

A store that cannot be reached raises StoreUnavailable within `timeout_s`,
never a backend's own exception, and `open_store` wraps every backend in a
breaker: after a failure of the store (down, frozen, full disk), calls fail at
once for `retry_after_s`, so a frozen store costs the model worker one timeout,
not one per request; a failure of one blob (a path that became a folder, a file
it may not replace) keeps only that key out for as long.

The file store takes a capacity (`max_bytes`): the least recently used blobs go
to make room. Redis has its own (`maxmemory` with an LRU policy: deploy/k8s/redis.yaml).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar
from urllib.parse import urlparse

from ctxcomp.errors import StoreUnavailable
from ctxcomp.kv.blob import token_ids_digest

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_RETRY_AFTER_S = 1.0
MAX_KEYS_DOWN = 64


def kv_namespace(tenant: str, cache_salt: str) -> str:
    """The namespace of a request's stored KV: "" (shared by every request) when it has neither a
    tenant nor a salt, else a digest of both."""
    if not tenant and not cache_salt:
        return ""
    return hashlib.sha256(f"ctxcomp-kv-namespace-v1\0{tenant}\0{cache_salt}".encode()).hexdigest()


def blob_key(model_fingerprint: str, token_ids: Sequence[int], codec: str, namespace: str = "") -> str:
    material = f"ctxcomp-kv-v1\0{model_fingerprint}\0{token_ids_digest(token_ids)}\0{codec}"
    if namespace:
        material += f"\0{namespace}"
    return hashlib.sha256(material.encode()).hexdigest()


class BlobStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


# Errors of the store itself (its disk, its mount), not of one blob's path: they stop every key.
STORE_WIDE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOTCONN, errno.ESTALE})


def write_atomically(path: Path, data: bytes, failure: str, mode: int | None = None, key: str | None = None) -> None:
    """`data` at `path` whole or not at all (temp file + rename), its folder made if need be;
    `mode` sets the file's permissions (mkstemp's are 0600). StoreUnavailable(`failure`: why),
    for `key` alone unless the error is the store's own (STORE_WIDE_ERRNOS)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise _unavailable(failure, err, key) from err


def _unavailable(failure: str, err: OSError, key: str | None) -> StoreUnavailable:
    return StoreUnavailable(f"{failure}: {err.strerror or type(err).__name__}",
                            key=None if err.errno in STORE_WIDE_ERRNOS else key)


class FileStore:
    """One file per blob under a root folder, written atomically (temp file + rename).

    With `max_bytes`, the store keeps under that many bytes of blobs: a write first deletes the
    least recently used blobs (read or written) it needs room for. Blobs already in the folder
    count from the start, oldest first; the cap is this process's view of the folder, so
    servers sharing one folder should share one cap between them (or use redis)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"a KV store capacity must be positive, got {max_bytes}")
        self.root = root
        self.url = root.as_uri()
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # key -> bytes, least recently used first
        self.stored_bytes = 0
        self.evicted = 0  # blobs deleted to make room (metrics, tests)
        if max_bytes is not None:
            self._count_existing()

    def _count_existing(self) -> None:
        found = []
        for path in self.root.glob("*/*.kvblob"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, path.stem, stat.st_size))
        for _, key, size in sorted(found):
            self._sizes[key] = size
            self.stored_bytes += size

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key[:2] / f"{key}.kvblob"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.max_bytes is not None:
            if len(data) > self.max_bytes:
                raise StoreUnavailable(f"KV store (file): a {len(data)}-byte blob is larger than the store's capacity "
                                       f"of {self.max_bytes} bytes (--kv-store-max-bytes)", key=key)
            self._make_room(key, len(data))
        write_atomically(path, data, "KV store (file) could not write a blob", key=key)
        if self.max_bytes is not None:
            with self._lock:
                self.stored_bytes += len(data) - self._sizes.pop(key, 0)
                self._sizes[key] = len(data)

    def _make_room(self, key: str, size: int) -> None:
        with self._lock:
            victims = []
            room = self.max_bytes - (self.stored_bytes - self._sizes.get(key, 0))  # type: ignore[operator]
            for old in self._sizes:
                if room >= size:
                    break
                if old != key:
                    victims.append(old)
                    room += self._sizes[old]
            for old in victims:
                self.stored_bytes -= self._sizes.pop(old)
                self.evicted += 1
        for old in victims:
            self._path(old).unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise _unavailable("KV store (file) could not read a blob", err, key) from err
        if self.max_bytes is not None:
            with self._lock:
                if key in self._sizes:
                    self._sizes.move_to_end(key)
        return data

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise _unavailable("KV store (file) could not delete a blob", err, key) from err
        if self.max_bytes is not None:
            with self._lock:
                self.stored_bytes -= self._sizes.pop(key, 0)


class RedisStore:
    """Blobs as Redis string values under 'ctxcomp:kv:<key>', optionally expiring.

    Every call gives up after `timeout_s` (connect and socket), with no retries of its own.
    """

    def __init__(self, url: str, ttl_s: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None, retry_on_timeout=False
        )
        self.ttl_s = ttl_s
        self._errors = (redis.RedisError, OSError)

    def _call(self, action: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except self._errors as err:
            raise StoreUnavailable(f"KV store (redis) did not answer a {action}: {type(err).__name__}") from err

    def put(self, key: str, data: bytes) -> None:
        self._call("write", lambda: self.client.set(f"ctxcomp:kv:{key}", data, ex=self.ttl_s))

    def get(self, key: str) -> bytes | None:
        return self._call("read", lambda: self.client.get(f"ctxcomp:kv:{key}"))

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self.client.delete(f"ctxcomp:kv:{key}"))


class GuardedStore:
    """A breaker around a store: after a StoreUnavailable of the store itself, every call
    fails at once for `retry_after_s`; after one of a single key (StoreUnavailable.key), only
    that key's calls do. The first call after that tries the backend again."""

    def __init__(
        self, store: BlobStore, retry_after_s: float = DEFAULT_RETRY_AFTER_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.url = store.url
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down: dict[str | None, tuple[float, str]] = {}  # None (the store) or a key -> (until, why)

    def _call(self, key: str, call: Callable[[], T]) -> T:
        now = self._clock()
        for scope in (None, key):
            until, reason = self._down.get(scope, (0.0, ""))
            if now < until:
                raise StoreUnavailable(f"{reason} (not retried for {self.retry_after_s:g} s)", key=scope)
            self._down.pop(scope, None)
        try:
            return call()
        except StoreUnavailable as err:
            if len(self._down) > MAX_KEYS_DOWN:  # a flood of failing keys is the store's own failure
                self._down.clear()
                err.key = None
            self._down[err.key] = (self._clock() + self.retry_after_s, str(err))
            raise

    def put(self, key: str, data: bytes) -> None:
        self._call(key, lambda: self.store.put(key, data))

    def get(self, key: str) -> bytes | None:
        return self._call(key, lambda: self.store.get(key))

    def delete(self, key: str) -> None:
        self._call(key, lambda: self.store.delete(key))


def open_store(
    url: str, timeout_s: float = DEFAULT_TIMEOUT_S, retry_after_s: float = DEFAULT_RETRY_AFTER_S, max_bytes: int | None = None
) -> GuardedStore:
    """A store by URL; `max_bytes` caps a file store (redis: set maxmemory on the server)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        backend: BlobStore = FileStore(Path(parsed.path if parsed.scheme else url).expanduser(), max_bytes)
    elif parsed.scheme in ("redis", "rediss"):
        if max_bytes is not None:
            raise ValueError("a redis KV store's capacity is the redis server's maxmemory, with an LRU policy; "
                             "--kv-store-max-bytes is for file stores")
        backend = RedisStore(url, timeout_s=timeout_s)
    else:
        raise ValueError(f"unknown blob store scheme {parsed.scheme!r} in {url!r}; valid: file://, redis://")
    return GuardedStore(backend, retry_after_s)
