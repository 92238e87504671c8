"""KV stores: namespaced keys, the file store's capacity, and a breaker per failing key."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ctxcomp.errors import StoreUnavailable
from ctxcomp.kv.chunks import chunk_keys
from ctxcomp.kv.store import FileStore, GuardedStore, blob_key, kv_namespace, open_store

TOKENS = list(range(600))


def test_a_namespace_is_in_every_key_and_no_namespace_keeps_the_plain_keys() -> None:
    plain = blob_key("fp", TOKENS, "int8")
    assert kv_namespace("", "") == "" and blob_key("fp", TOKENS, "int8", "") == plain
    spaces = {kv_namespace(t, s) for t in ("", "acme", "globex") for s in ("", "salt")} - {""}
    assert len(spaces) == 5
    assert len({blob_key("fp", TOKENS, "int8", n) for n in spaces} | {plain}) == 6
    first_chunks = {chunk_keys("fp", TOKENS, 256, n)[0] for n in spaces | {""}}
    assert len(first_chunks) == 6  # the chain starts in the namespace: no chunk is shared either


def blob(i: int, size: int = 1000) -> bytes:
    return bytes([i % 256]) * size


def test_the_file_store_stays_under_its_capacity_deleting_the_least_recently_used(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_bytes=10_000)
    for i in range(10):
        store.put(f"key{i}", blob(i))
    assert store.get("key0") == blob(0)  # read: now the most recently used
    for i in range(10, 30):
        store.put(f"key{i}", blob(i))
        on_disk = sum(p.stat().st_size for p in tmp_path.glob("*/*.kvblob"))
        assert on_disk == store.stored_bytes <= 10_000
    assert store.get("key0") is None and store.get("key1") is None  # evicted in time
    assert [store.get(f"key{i}") for i in range(20, 30)] == [blob(i) for i in range(20, 30)]
    assert store.evicted == 20


def test_blobs_already_in_the_folder_count_against_the_capacity(tmp_path: Path) -> None:
    first = FileStore(tmp_path)
    for i in range(8):
        first.put(f"old{i}", blob(i))
    store = FileStore(tmp_path, max_bytes=10_000)
    assert store.stored_bytes == 8_000
    for i in range(5):
        store.put(f"new{i}", blob(i))
    assert store.stored_bytes <= 10_000 and store.get("old0") is None and store.get("new4") == blob(4)


def test_a_blob_larger_than_the_store_is_refused_naming_the_capacity(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", max_bytes=500)
    with pytest.raises(StoreUnavailable, match="larger than the store's capacity of 500 bytes"):
        store.put("big", blob(1))
    store.put("small", blob(2, 400))  # the breaker held that key only
    assert store.get("small") == blob(2, 400)


def test_one_broken_blob_path_keeps_only_its_own_key_out(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", retry_after_s=60)
    store.put("aa11", b"one")
    path = store.store._path("aa11")
    path.unlink()
    path.mkdir()  # the blob's path became a folder
    with pytest.raises(StoreUnavailable) as first:
        store.get("aa11")
    assert first.value.key == "aa11"
    store.put("bb22", b"two")  # another key: served at once
    assert store.get("bb22") == b"two"
    with pytest.raises(StoreUnavailable, match="not retried") as again:
        store.get("aa11")
    assert "could not read a blob" in str(again.value)


def test_a_store_that_is_down_keeps_every_key_out() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    store = open_store(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, retry_after_s=60)
    assert isinstance(store, GuardedStore)
    with pytest.raises(StoreUnavailable) as down:
        store.get("aa11")
    assert down.value.key is None
    with pytest.raises(StoreUnavailable, match="not retried"):
        store.get("bb22")
