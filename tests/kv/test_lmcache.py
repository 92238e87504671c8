"""LMCache chunks: written by ctxcomp, read back by LMCache's own engine (and the reverse).

The round trips run lmcache_reader.py in the LMCache venv (`make test` builds .venv/lmcache:
lmcache==0.5.6 and vLLM's wheel, whose hash functions LMCache imports, on the CPU torch).
Models are a tiny random-weight Llama and the shipped SmolLM2 behind the real pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ctxcomp.kv import lmcache
from ctxcomp.kv.architectures import head_dim_of
from ctxcomp.kv.chunks import prefill_with_chunks
from ctxcomp.kv.prefill import PrefillResult, prefill

ROOT = Path(__file__).resolve().parents[2]
READER = Path(__file__).with_name("lmcache_reader.py")
LMCACHE_PYTHON = Path(os.environ.get("CTXCOMP_LMCACHE_PYTHON", ROOT / ".venv" / "lmcache" / "bin" / "python"))
CHUNK = 16
SEED = "0"


@pytest.fixture(scope="module")
def llm(tiny_llama):  # tests/kv/conftest.py
    return tiny_llama(hidden_size=256)


def ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def layout(**fields: Any) -> lmcache.LMCacheLayout:
    return lmcache.LMCacheLayout(**{"model_name": "org/tiny-llama", "hash_seed": SEED, "chunk_size": CHUNK, **fields})


def engine_kv(result: PrefillResult, heads: slice = slice(None)) -> torch.Tensor:
    """The prefill as vLLM's paged memory holds it, gathered: [2, layers, tokens, heads*head_dim]."""
    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[0, heads].transpose(0, 1).reshape(t.shape[2], -1)

    return torch.stack([torch.stack([flat(k) for k in result.keys]), torch.stack([flat(v) for v in result.values])])


def run_lmcache(tmp_path: Path, store: lmcache.LMCacheStore, llm_config: Any, tokens: list[int], worker: int = 0,
                kv_to_store: torch.Tensor | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """LMCache's engine over store.root: (optionally store, then) lookup and retrieve tokens."""
    assert LMCACHE_PYTHON.exists(), f"{LMCACHE_PYTHON} is missing: `make test` installs it into .venv/lmcache"
    request = {
        "root": str(store.root), "model_name": store.layout.model_name, "world_size": store.layout.world_size,
        "worker_id": worker, "kv_dtype": store.layout.kv_dtype, "chunk_size": store.layout.chunk_size,
        "layers": llm_config.num_hidden_layers, "heads_per_worker": llm_config.num_key_value_heads // store.layout.world_size,
        "head_dim": head_dim_of(llm_config),
        "hash_algorithm": store.layout.hash_algorithm, "token_ids": tokens,
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    args = [str(LMCACHE_PYTHON), str(READER), str(tmp_path / "request.json"), str(tmp_path / "result.safetensors")]
    if kv_to_store is not None:
        save_file({"kv": kv_to_store.contiguous()}, tmp_path / "kv.safetensors")
        args.append(str(tmp_path / "kv.safetensors"))
    env = {**os.environ, "PYTHONHASHSEED": store.layout.hash_seed}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loaded 'sha256_cbor' from vllm" in done.stderr  # LMCache hashed with vLLM's function, not a fallback
    with safe_open(tmp_path / "result.safetensors", "pt") as result:
        summary = json.loads(result.metadata()["summary"])
        tensors = {name: result.get_tensor(name) for name in result.keys()}
    return summary, tensors


def test_lmcache_finds_our_chunks_and_retrieves_them_bit_for_bit(llm, tmp_path) -> None:
    store = lmcache.LMCacheStore(tmp_path / "fs", layout())
    tokens = ids(1, 3 * CHUNK + 5)
    done = prefill_with_chunks(llm, tokens, store)
    assert (done.chunks, done.stored) == (3, 3)
    summary, tensors = run_lmcache(tmp_path, store, llm.model.config, tokens)
    assert summary["lmcache"] == lmcache.LMCACHE_VERSION
    assert summary["keys"] == [name for key in done.keys for name in store.cache_keys(key)]
    assert summary["lookup_tokens"] == summary["retrieved_tokens"] == 3 * CHUNK  # every full chunk; vLLM prefills the tail
    expected = engine_kv(done.result).to(torch.bfloat16)
    assert sorted(tensors) == [f"chunk_{s}_{s + CHUNK}" for s in (0, 16, 32)]
    for name, tensor in tensors.items():
        start, end = (int(n) for n in name.split("_")[1:])
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[:, :, start:end])
    # and what LMCache hands vLLM is the model's own K/V (its DynamicCache), to bf16 rounding
    with torch.no_grad():
        cache = llm.model(torch.tensor([tokens]), use_cache=True).past_key_values  # a DynamicCache
    own = PrefillResult(tuple(layer.keys for layer in cache.layers), tuple(layer.values for layer in cache.layers),
                        None, None, "hf")  # type: ignore[arg-type]
    torch.testing.assert_close(tensors["chunk_16_32"].float(), engine_kv(own)[:, :, 16:32], atol=2e-2, rtol=2e-2)


def test_each_tensor_parallel_worker_gets_its_share_of_the_heads(llm, tmp_path) -> None:
    store = lmcache.LMCacheStore(tmp_path / "fs", layout(world_size=2, kv_dtype="half"))
    tokens = ids(2, 2 * CHUNK)
    done = prefill_with_chunks(llm, tokens, store)
    assert len(list(store.root.glob("*.data"))) == 2 * 2  # two chunks, one record per worker
    for worker in (0, 1):
        summary, tensors = run_lmcache(tmp_path, store, llm.model.config, tokens, worker=worker)
        assert summary["retrieved_tokens"] == 2 * CHUNK and all("@2@%d@" % worker in k for k in summary["keys"])
        expected = engine_kv(done.result, slice(worker, worker + 1)).half()
        assert torch.equal(tensors["chunk_0_16"], expected[:, :, :16]) and torch.equal(tensors["chunk_16_32"], expected[:, :, 16:])


def test_chunks_lmcache_stores_are_ours_byte_for_byte_and_feed_our_prefix_reuse(llm, tmp_path) -> None:
    tokens = ids(3, 2 * CHUNK + 3)
    ours = lmcache.LMCacheStore(tmp_path / "ours", layout())
    done = prefill_with_chunks(llm, tokens, ours)
    theirs = lmcache.LMCacheStore(tmp_path / "theirs", layout())
    theirs.root.mkdir(exist_ok=True)
    summary, _ = run_lmcache(tmp_path, theirs, llm.model.config, tokens, kv_to_store=engine_kv(done.result).to(torch.bfloat16))
    assert summary["retrieved_tokens"] == 2 * CHUNK
    names = sorted(p.name for p in ours.root.glob("*.data"))
    assert names == sorted(p.name for p in theirs.root.glob("*.data")) and len(names) == 2
    assert all((ours.root / n).read_bytes() == (theirs.root / n).read_bytes() for n in names)
    reused = prefill_with_chunks(llm, tokens + ids(4, 20), theirs)  # a longer prompt over what LMCache stored
    assert (reused.reused, reused.prefilled_tokens) == (2, 3 + 20)


def test_chunk_hash_is_vllms_sha256_cbor_chained_from_the_seed() -> None:
    # canonical CBOR of (prefix, tokens, extra keys): array(3), uint64, array of uints, empty array
    assert cbor2.dumps((2**63 + 5, (1, 2, 300), ()), canonical=True) == bytes.fromhex("831b8000000000000005" "83010219012c" "80")
    seed = int.from_bytes(lmcache.sha256_cbor(SEED)[:8], "big")
    tokens = ids(5, 2 * CHUNK + 1)
    first = int.from_bytes(lmcache.sha256_cbor((seed, tuple(tokens[:CHUNK]), ()))[:8], "big")
    hashes = lmcache.chunk_hashes(tokens, layout())
    assert len(hashes) == 2 and hashes[0] == first  # the partial tail has no chunk
    assert lmcache.chunk_hashes(tokens, layout(hash_seed="1"))[0] != first  # the seed is vLLM's PYTHONHASHSEED
    assert lmcache.cache_key(layout(), first, 0) == f"org/tiny-llama@1@0@{first:x}@bfloat16"
    assert lmcache.file_name("org/m@1@0@ab@half") == "org-SEP-m@1@0@ab@half.data"


def test_keys_are_the_same_in_another_process_whatever_its_hash_seed() -> None:
    tokens = ids(6, 3 * CHUNK)
    code = (f"from ctxcomp.kv import lmcache; print(lmcache.chunk_hashes({tokens!r}, lmcache.LMCacheLayout("
            f"model_name='m', hash_seed='0', chunk_size={CHUNK})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "random"}).stdout
    assert out.strip() == repr(lmcache.chunk_hashes(tokens, lmcache.LMCacheLayout(model_name="m", hash_seed="0", chunk_size=CHUNK)))


def test_a_badly_framed_record_is_deleted_and_recomputed(llm, tmp_path) -> None:
    store = lmcache.LMCacheStore(tmp_path / "fs", layout())
    tokens = ids(7, 3 * CHUNK + 1)
    prefill_with_chunks(llm, tokens, store)
    second = store.root / lmcache.file_name(store.cache_keys(store.keys(tokens)[1])[0])
    second.write_bytes(second.read_bytes()[:-64])  # a torn write
    after = prefill_with_chunks(llm, tokens, store)
    assert (after.reused, after.corrupt, after.stored) == (1, 1, 2)
    assert prefill_with_chunks(llm, tokens, store).reused == 3


@pytest.mark.parametrize("url, message", [
    ("lmcache+fs:///x?model=m", "hash_seed"),
    ("lmcache+fs:///x?hash_seed=0", "model"),
    ("lmcache+fs:///x?model=m&hash_seed=0&hash_algorithm=builtin", "per-process"),
    ("lmcache+fs:///x?model=m&hash_seed=0&version=0.3.9", "not supported"),
    ("lmcache+fs:///x?model=m&hash_seed=0&kv_dtype=int8", "dtype"),
    ("lmcache+fs:///x?model=m&hash_seed=0&colour=red", "colour"),
])
def test_a_store_url_lmcache_would_not_match_is_refused(url, message) -> None:
    with pytest.raises(ValueError, match=message):
        lmcache.open_lmcache_store(url)


def test_the_pipeline_writes_the_compressed_contexts_chunks_for_vllm(hub, tmp_path) -> None:
    from ctxcomp.errors import InvalidRequest
    from ctxcomp.kv.stage import open_kv_store
    from ctxcomp.pipeline import Compressor
    from ctxcomp.types import CompressRequest, Document

    target = open_kv_store(f"lmcache+fs://{tmp_path}/fs?model=HuggingFaceTB/SmolLM2-135M-Instruct&hash_seed=0&chunk_size={CHUNK}")
    assert target.shared_namespace  # vLLM's keys: the server refuses several tenants with it
    store = target.store
    compressor = Compressor(hub, kv_store=target)
    text = "The Vasa was a Swedish warship that sank on her maiden voyage in 1628 because she was top-heavy. " * 4
    request = CompressRequest(query="Why did the Vasa sink?", documents=(Document("a", text),), rate=0.6, return_kv=True)
    first, again = compressor.compress(request), compressor.compress(request)
    llm = hub.get("downstream_llm")
    ids_ = llm.tokenizer(first.context)["input_ids"]
    assert first.kv is not None and first.kv.codec == "lmcache" and first.kv.store_lookup == "miss"
    assert list(first.kv_keys) == [name for key in store.keys(ids_) for name in store.cache_keys(key)]
    assert len(first.kv_keys) == len(ids_) // CHUNK >= 2 and again.kv.store_lookup == "hit" and again.kv_keys == first.kv_keys
    summary, tensors = run_lmcache(tmp_path, store, llm.model.config, ids_)
    assert summary["keys"] == list(first.kv_keys) and summary["retrieved_tokens"] == len(first.kv_keys) * CHUNK
    ours = engine_kv(prefill(llm.model, torch.tensor([ids_]))).to(torch.bfloat16)
    assert torch.equal(tensors[f"chunk_{CHUNK}_{2 * CHUNK}"], ours[:, :, CHUNK : 2 * CHUNK])
    with pytest.raises(InvalidRequest, match="kv_codec"):
        compressor.compress(CompressRequest(query="q", documents=(Document("a", text),), return_kv=True, kv_codec="fp16"))
