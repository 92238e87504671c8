"""Where KV blobs live, behind one interface chosen by URL scheme.

    file:///var/cache/ctxcomp/kv   (default scheme; a plain path works too)
    redis://host:6379/0

Keys are content addresses: SHA-256 over the model fingerprint and the
token-id digest, so the same tokens for the same model give the same key in
any process on any machine (no Python hash(), no pickles, no timestamps).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol, Sequence
from urllib.parse import urlparse

from ctxcomp.kv.blob import token_ids_digest


def blob_key(model_fingerprint: str, token_ids: Sequence[int], codec: str) -> str:
    material = f"ctxcomp-kv-v1\0{model_fingerprint}\0{token_ids_digest(token_ids)}\0{codec}"
    return hashlib.sha256(material.encode()).hexdigest()


class BlobStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...


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
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.exists() else None


class RedisStore:
    """Blobs as Redis string values under 'ctxcomp:kv:<key>', optionally expiring."""

    def __init__(self, url: str, ttl_s: int | None = None) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url)
        self.ttl_s = ttl_s

    def put(self, key: str, data: bytes) -> None:
        self.client.set(f"ctxcomp:kv:{key}", data, ex=self.ttl_s)

    def get(self, key: str) -> bytes | None:
        return self.client.get(f"ctxcomp:kv:{key}")


def open_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStore(Path(parsed.path if parsed.scheme else url).expanduser())
    if parsed.scheme in ("redis", "rediss"):
        return RedisStore(url)
    raise ValueError(f"unknown blob store scheme {parsed.scheme!r} in {url!r}; valid: file://, redis://")
