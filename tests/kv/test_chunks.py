"""Chained chunk keys and prefix reuse through the store, on a tiny random-weight Llama."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ctxcomp.kv import chunks
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.store import FileStore

CHUNK = 16


@pytest.fixture(scope="module")
def llm(tiny_llama):  # tests/kv/conftest.py
    return tiny_llama(hidden_size=128)


def ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_keys_chain_and_are_the_same_in_another_process() -> None:
    tokens = ids(1, 3 * CHUNK + 5)
    keys = chunks.chunk_keys("model", tokens, CHUNK)
    assert len(keys) == 3  # the partial last chunk has no key
    other_start = ids(2, CHUNK) + tokens[CHUNK:]
    assert all(a != b for a, b in zip(keys, chunks.chunk_keys("model", other_start, CHUNK)))  # a key holds its prefix
    assert chunks.chunk_keys("other-model", tokens, CHUNK)[0] != keys[0]
    code = f"from ctxcomp.kv import chunks; print(chunks.chunk_keys('model', {tokens!r}, {CHUNK}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(keys)


def test_a_shared_prefix_is_reused_and_only_the_rest_is_prefilled(llm, tmp_path) -> None:
    store = FileStore(tmp_path)
    first = ids(3, 3 * CHUNK + 4)
    done = chunks.prefill_with_chunks(llm, first, chunks.BlobChunks(store, llm.fingerprint, CHUNK))
    assert (done.chunks, done.reused, done.stored, done.prefilled_tokens) == (3, 0, 3, len(first))
    second = first[: 2 * CHUNK] + ids(4, CHUNK + 9)
    again = chunks.prefill_with_chunks(llm, second, chunks.BlobChunks(store, llm.fingerprint, CHUNK))
    assert (again.reused, again.stored, again.prefilled_tokens) == (2, 1, len(second) - 2 * CHUNK)
    full = prefill(llm.model, torch.tensor([second]), backend="reference")
    for ours, theirs in zip(again.result.keys + again.result.values, full.keys + full.values):
        torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=5e-3)  # the reused prefix went through fp16
    torch.testing.assert_close(again.result.last_logits, full.last_logits, atol=5e-3, rtol=5e-3)
    assert again.result.start_pos == 0 and again.result.keys[0].shape[-2] == len(second)


def test_a_corrupt_chunk_is_recomputed_never_served(llm, tmp_path) -> None:
    store = FileStore(tmp_path)
    tokens = ids(5, 3 * CHUNK)
    chunks.prefill_with_chunks(llm, tokens, chunks.BlobChunks(store, llm.fingerprint, CHUNK))
    second_key = chunks.chunk_keys(llm.fingerprint, tokens, CHUNK)[1]
    data = bytearray(store.get(second_key))
    data[-10] ^= 0xFF
    store.put(second_key, bytes(data))
    after = chunks.prefill_with_chunks(llm, tokens, chunks.BlobChunks(store, llm.fingerprint, CHUNK))
    assert (after.reused, after.corrupt, after.stored) == (1, 1, 1)  # reuse stops at the bad chunk, which is replaced
    healed = chunks.prefill_with_chunks(llm, tokens, chunks.BlobChunks(store, llm.fingerprint, CHUNK))
    # 48 tokens: the last chunk is prefilled again (its last token gives the logits), not stored again
    assert (healed.reused, healed.corrupt, healed.stored, healed.prefilled_tokens) == (2, 0, 0, CHUNK)
    store.delete(chunks.chunk_keys(llm.fingerprint, tokens, CHUNK)[0])
    assert chunks.prefill_with_chunks(llm, tokens, chunks.BlobChunks(store, llm.fingerprint, CHUNK)).reused == 0  # nothing after a missing chunk is used


def test_prefix_attention_equals_attention_over_the_whole_sequence(llm) -> None:
    tokens = torch.tensor([ids(6, 40)])
    whole = prefill(llm.model, tokens, backend="reference")
    head = prefill(llm.model, tokens[:, :24], backend="reference")
    tail = prefill(llm.model, tokens[:, 24:], start_pos=24, past=tuple(zip(head.keys, head.values)))
    for ours, theirs in zip(tail.keys, whole.keys):
        torch.testing.assert_close(ours, theirs[:, :, 24:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tail.last_logits, whole.last_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="start_pos"):
        prefill(llm.model, tokens[:, 24:], start_pos=20, past=tuple(zip(head.keys, head.values)))
