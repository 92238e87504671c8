"""Where KV blobs live, behind one interface chosen by URL scheme.

    file:///var/cache/ctxcomp/kv   (default scheme; a plain path works too)
    redis://host:6379/0

Keys are content addresses: SHA-256 over the model fingerprint and the
token-id digest, so the same tokens for the same model give the same key in
any process on any machine (no Python hash(), no pickles, no timestamps).

A store that cannot be reached raises StoreUnavailable within `timeout_s`,
never a backend's own exception, and `open_store` wraps every backend in a
breaker: after one failure, calls fail at once for `retry_after_s`, so a
frozen store costs the model worker one timeout, not one per request.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar
from urllib.parse import urlparse

from ctxcomp.errors import StoreUnavailable
from ctxcomp.kv.blob import token_ids_digest

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_RETRY_AFTER_S = 1.0


def blob_key(model_fingerprint: str, token_ids: Sequence[int], codec: str) -> str:
    material = f"ctxcomp-kv-v1\0{model_fingerprint}\0{token_ids_digest(token_ids)}\0{codec}"
    return hashlib.sha256(material.encode()).hexdigest()


class BlobStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


def write_atomically(path: Path, data: bytes, failure: str, mode: int | None = None) -> None:
    """`data` at `path` whole or not at all (temp file + rename), its folder made if need be;
    `mode` sets the file's permissions (mkstemp's are 0600). StoreUnavailable(`failure`: why)."""
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
        raise StoreUnavailable(f"{failure}: {err.strerror or type(err).__name__}") from err


class FileStore:
    """One file per blob under a root folder, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key[:2] / f"{key}.kvblob"

    def put(self, key: str, data: bytes) -> None:
        write_atomically(self._path(key), data, "KV store (file) could not write a blob")

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreUnavailable(f"KV store (file) could not read a blob: {err.strerror or type(err).__name__}") from err

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise StoreUnavailable(f"KV store (file) could not delete a blob: {err.strerror or type(err).__name__}") from err


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
    """A breaker around a store: after a StoreUnavailable, every call fails at once
    for `retry_after_s`; the first call after that tries the backend again."""

    def __init__(
        self, store: BlobStore, retry_after_s: float = DEFAULT_RETRY_AFTER_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.url = store.url
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._reason = ""

    def _call(self, call: Callable[[], T]) -> T:
        if self._clock() < self._down_until:
            raise StoreUnavailable(f"{self._reason} (not retried for {self.retry_after_s:g} s)")
        try:
            return call()
        except StoreUnavailable as err:
            self._down_until = self._clock() + self.retry_after_s
            self._reason = str(err)
            raise

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.store.put(key, data))

    def get(self, key: str) -> bytes | None:
        return self._call(lambda: self.store.get(key))

    def delete(self, key: str) -> None:
        self._call(lambda: self.store.delete(key))


def open_store(url: str, timeout_s: float = DEFAULT_TIMEOUT_S, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> GuardedStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        backend: BlobStore = FileStore(Path(parsed.path if parsed.scheme else url).expanduser())
    elif parsed.scheme in ("redis", "rediss"):
        backend = RedisStore(url, timeout_s=timeout_s)
    else:
        raise ValueError(f"unknown blob store scheme {parsed.scheme!r} in {url!r}; valid: file://, redis://")
    return GuardedStore(backend, retry_after_s)
