"""What a batch job does to one record batch, whatever engine runs it.

`CompressBatch` is constructed once per worker (it loads the models) and
called on a column dict (`{"id": [...], "text": [...], "query": [...]}`),
returning an Arrow table of OUTPUT_SCHEMA rows. The local runner calls it in-process; the Ray
runner hands the same class to `map_batches` as an actor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ctxcomp import methods
from ctxcomp.cancellation import Cancelled
from ctxcomp.errors import CtxcompError
from ctxcomp.types import CompressRequest, Document

if TYPE_CHECKING:
    from ctxcomp.types import CompressResult

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("query", pa.string()),  # the record's query, as it came (null without one)
        ("text", pa.string()),
        ("tokens_before", pa.int64()),
        ("tokens_after", pa.int64()),
        ("method", pa.string()),
        ("config_hash", pa.string()),
        ("kv_key", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class JobConfig:
    """Everything that decides a record's output; its hash marks the output rows."""

    method: str = methods.DEFAULT_METHOD
    rate: float | None = None
    target_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    kv_store: str = ""  # blob store URL; empty = no KV blobs
    kv_codec: str = "fp16"
    embeddings: bool = False  # sentence-encoder embedding of each compressed text (xRAG / faiss)

    def config_hash(self) -> str:
        """Stable across processes and machines: sorted JSON of the settings."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CompressBatch:
    """Compress a batch of records; one instance per worker (models load once)."""

    def __init__(self, config: JobConfig, hub_overrides: Mapping[str, str] | None = None) -> None:
        from ctxcomp.hub import ModelHub
        from ctxcomp.pipeline import Compressor

        self.config = config
        self.config_hash = config.config_hash()
        self.hub = ModelHub(dict(hub_overrides or {}))
        self.compressor = Compressor(self.hub)
        self.store = None
        if config.kv_store:
            from ctxcomp.kv.stage import open_kv_store

            self.store = open_kv_store(config.kv_store)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> pa.Table:
        """batch: column -> values (id, text, optional query and format); returns rows in OUTPUT_SCHEMA."""
        return pa.Table.from_pydict(self.rows(batch), schema=OUTPUT_SCHEMA)

    def rows(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        ids = [str(i) for i in batch["id"]]
        texts = [str(t) for t in batch["text"]]
        raw_queries = batch["query"] if "query" in batch else [None] * len(ids)
        queries = [str(q) if q is not None else "" for q in raw_queries]
        formats = [str(f) if f else "text" for f in (batch["format"] if "format" in batch else [None] * len(ids))]
        requests = [self._request(i, t, q, f) for i, t, q, f in zip(ids, texts, queries, formats)]
        results, errors = self._compress(requests)
        rows: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        compressed = [r.context if r is not None else "" for r in results]
        embeddings = self._embed(compressed, results) if self.config.embeddings else [None] * len(ids)
        for record_id, query, result, error, embedding in zip(ids, raw_queries, results, errors, embeddings):
            rows["id"].append(record_id)
            rows["query"].append(None if query is None else str(query))
            rows["text"].append(result.context if result else None)
            rows["tokens_before"].append(result.tokens_before if result else None)
            rows["tokens_after"].append(result.tokens_after if result else None)
            rows["method"].append(self.config.method)
            rows["config_hash"].append(self.config_hash)
            rows["kv_key"].append(self._kv_key(result) if result and not error else None)
            rows["embedding"].append(embedding)
            rows["error"].append(error)
        return rows

    def _request(self, record_id: str, text: str, query: str, format: str) -> CompressRequest:
        c = self.config
        return CompressRequest(
            query=query, documents=(Document(record_id, text, format=format),), method=c.method, rate=c.rate,
            target_tokens=c.target_tokens, options=dict(c.options),
        )

    def _compress(self, requests: list[CompressRequest]) -> tuple[list[Any], list[str | None]]:
        """Results in order; a record the pipeline refuses gets its error, the rest still run.
        Cancelled (the run was interrupted) is no record's error: it ends the batch."""
        try:
            return list(self.compressor.compress_batch(requests)), [None] * len(requests)
        except Cancelled:
            raise
        except CtxcompError:
            results, errors = [], []
            for request in requests:
                try:
                    results.append(self.compressor.compress(request))
                    errors.append(None)
                except Cancelled:
                    raise
                except CtxcompError as err:
                    results.append(None)
                    errors.append(str(err))
            return results, errors

    def _kv_key(self, result: CompressResult) -> str | None:
        if self.store is None or not result.context:
            return None
        from ctxcomp.kv.stage import compute_kv

        return compute_kv(self.hub, result.context, self.config.kv_codec, self.store).key

    def _embed(self, texts: list[str], results: list[Any]) -> list[list[float] | None]:
        present = [i for i, (t, r) in enumerate(zip(texts, results)) if r is not None and t]
        out: list[list[float] | None] = [None] * len(texts)
        if present:
            vectors = self.hub.sentence_encoder().encode(
                [texts[i] for i in present], convert_to_numpy=True, normalize_embeddings=True
            ).astype(np.float32)
            for i, vector in zip(present, vectors):
                out[i] = vector.tolist()
        return out
