"""ctxcomp's LMCache chunks through LMCache's own code; run by the LMCache venv's Python.

Usage: python lmcache_reader.py REQUEST.json RESULT.safetensors [KV.safetensors]

With KV.safetensors (tensor "kv" [2, layers, tokens, heads*head_dim], what vLLM's paged
memory holds for the tokens), LMCache's engine first stores it, as vLLM does after a
prefill, and waits until its FS connector has written every full chunk; then (always) it
looks the tokens up and retrieves them.

The request names the fs:// folder, the layout (model name, world size, worker, dtype,
chunk size, KV shape) and the token ids. Nothing here computes a hash, a key, a file name
or a byte offset: LMCache's ChunkedTokenDatabase (with vLLM's sha256_cbor and NONE_HASH, as
a vLLM deployment loads them), its LMCacheEngine, storage manager, remote backend, FS
connector and naive serde do. The engine's retrieve hands each chunk's memory object to the
GPU connector; ours records the tensors instead of copying them into vLLM's paged memory
(the one step that needs CUDA). The result holds every retrieved chunk's tensor, and in its
metadata the keys LMCache computed, what lookup found and which tokens retrieve returned.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmcache.utils import TORCH_DTYPE_TO_STR_DTYPE
from lmcache.v1.cache_engine import LMCacheEngineBuilder
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.gpu_connector.mock_gpu_connector import MockGPUConnector
from lmcache.v1.metadata import LMCacheMetadata

DTYPES = {name: dtype for dtype, name in TORCH_DTYPE_TO_STR_DTYPE.items()}


class RecordingConnector(MockGPUConnector):
    """Where vLLM's connector would copy each chunk into paged GPU memory, keep it."""

    def __init__(self, kv_shape: tuple) -> None:
        super().__init__(kv_shape)
        self.received: list[tuple[int, int, torch.Tensor]] = []

    def to_gpu(self, memory_obj, start: int, end: int, **kwargs) -> None:
        self.received.append((start, end, memory_obj.tensor.clone()))

    def batched_to_gpu(self, memory_objs, starts, ends, **kwargs) -> None:
        for memory_obj, start, end in zip(memory_objs, starts, ends):
            self.to_gpu(memory_obj, start, end)

    def from_gpu(self, memory_obj, start: int, end: int, **kwargs) -> None:
        memory_obj.tensor.copy_(kwargs["engine_kv"][:, :, start:end])

    def batched_from_gpu(self, memory_objs, starts, ends, **kwargs) -> None:
        for memory_obj, start, end in zip(memory_objs, starts, ends):
            self.from_gpu(memory_obj, start, end, **kwargs)


def main(request_path: str, result_path: str, kv_path: str = "") -> None:
    request = json.loads(open(request_path).read())
    chunk_size, dtype = request["chunk_size"], DTYPES[request["kv_dtype"]]
    layers, heads, head_dim = request["layers"], request["heads_per_worker"], request["head_dim"]
    kv_shape = (layers, 2, chunk_size, heads, head_dim)
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=chunk_size,
        local_cpu=False,
        max_local_cpu_size=0.5,
        remote_storage_plugins=["fs"],
        extra_config={"remote_storage_plugin.fs.base_path": request["root"]},
        remote_serde="naive",
        pre_caching_hash_algorithm=request["hash_algorithm"],
        lmcache_instance_id="ctxcomp-check",
    )
    metadata = LMCacheMetadata(
        model_name=request["model_name"], world_size=request["world_size"], local_world_size=request["world_size"],
        worker_id=request["worker_id"], local_worker_id=request["worker_id"], kv_dtype=dtype, kv_shape=kv_shape,
        chunk_size=chunk_size,
    )
    connector = RecordingConnector(kv_shape)
    engine = LMCacheEngineBuilder.get_or_create(
        "ctxcomp-check", config, metadata, connector, broadcast_fn=_one_worker, broadcast_object_fn=_one_worker
    )
    try:
        engine.post_init()  # builds the storage manager, as vLLM's connector does once its KV caches exist
        tokens = torch.tensor(request["token_ids"], dtype=torch.long)
        if kv_path:
            engine.store(tokens, engine_kv=load_file(kv_path)["kv"], req_id="ctxcomp-store")
            _wait_for_chunks(Path(request["root"]), len(tokens) // chunk_size)
        keys = [key.to_string() for _, _, key in engine.token_database.process_tokens(tokens=tokens)]
        found = engine.lookup(tokens=tokens, lookup_id="ctxcomp-check", pin=True)
        mask = engine.retrieve(tokens, torch.ones(len(tokens), dtype=torch.bool), req_id="ctxcomp-check")
        engine.lookup_unpin("ctxcomp-check")
    finally:
        LMCacheEngineBuilder.destroy("ctxcomp-check")
    tensors = {f"chunk_{start}_{end}": kv.contiguous() for start, end, kv in connector.received}
    summary = {"keys": keys, "lookup_tokens": int(found), "retrieved_tokens": int(mask.sum()), "lmcache": _version()}
    save_file(tensors, result_path, metadata={"summary": json.dumps(summary)})


def _wait_for_chunks(root: Path, chunks: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(root.glob("*.data"))) < chunks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"LMCache wrote {len(list(root.glob('*.data')))} of {chunks} chunks")
        time.sleep(0.05)


def _one_worker(value, source_rank):  # a single process: nothing to broadcast to
    return value


def _version() -> str:
    from importlib.metadata import version

    return version("lmcache")


if __name__ == "__main__":
    main(*sys.argv[1:])
