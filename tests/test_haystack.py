"""Haystack: the component after an in-memory BM25 retriever in a real Pipeline (sync and async),
serialization, against a real loopback server."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("haystack")
from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402

from ctxcomp.haystack import CtxcompDocumentCompressor  # noqa: E402

CORPUS = [
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50.",
    "Von Miller, a Denver linebacker, was named the most valuable player of Super Bowl 50.",
    "Beyonce and Bruno Mars performed at the halftime show of the game.",
    "Sourdough bread rises because wild yeast ferments the dough over many hours.",
]
QUERY = "Who was the most valuable player of Super Bowl 50?"


def pipeline(address: str, **compressor: object) -> Pipeline:
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=t, meta={"source": f"doc-{i}"}) for i, t in enumerate(CORPUS)])
    built = Pipeline()
    built.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(CORPUS)))
    built.add_component("compressor", CtxcompDocumentCompressor(address=address, **compressor))
    built.connect("retriever.documents", "compressor.documents")
    return built


def run(built: Pipeline) -> tuple[list[Document], list[Document]]:
    out = built.run({"retriever": {"query": QUERY}, "compressor": {"query": QUERY}}, include_outputs_from={"retriever"})
    return out["retriever"]["documents"], out["compressor"]["documents"]


def test_pipeline_keeps_ids_meta_and_scores_and_adds_stats(server) -> None:
    found, compressed = run(pipeline(server.address, rate=0.5, drop_empty=False))
    assert [d.id for d in compressed] == [d.id for d in found]
    for original, document in zip(found, compressed):
        assert document.score == original.score  # BM25's score stays; the method's is in meta
        stats = document.meta.pop("ctxcomp")
        assert document.meta == original.meta
        assert document.content == " ".join(original.content[a:b] for a, b in stats["kept_spans"])
        assert stats["tokens_after"] <= stats["tokens_before"]
    assert sum(len(d.content) for d in compressed) < sum(len(d.content) for d in found)


def test_async_pipeline_matches_the_blocking_one(server) -> None:
    built = pipeline(server.address, method="exit", order="relevance")
    _, blocking = run(built)
    asynchronous = asyncio.run(built.run_async({"retriever": {"query": QUERY}, "compressor": {"query": QUERY}}))
    assert [(d.id, d.content) for d in asynchronous["compressor"]["documents"]] == [(d.id, d.content) for d in blocking]
    assert "Von Miller" in blocking[0].content  # order="relevance": the most relevant first
    assert not any("Sourdough" in d.content for d in blocking)


def test_serializes_without_the_token(server, monkeypatch) -> None:
    monkeypatch.setenv("CTXCOMP_TOKEN", "not-written-out")
    built = pipeline(server.address, method="exit", rate=0.4, options={"threshold": 0.3}, order="edges")
    data = built.to_dict()
    assert "not-written-out" not in repr(data)
    restored = Pipeline.from_dict(data, allowed_modules=["ctxcomp.haystack"])  # Haystack 3 allowlists modules
    component = restored.get_component("compressor")
    assert isinstance(component, CtxcompDocumentCompressor)
    assert component.to_dict() == built.get_component("compressor").to_dict()
    assert component.connection.token == "not-written-out"  # resolved again from the environment
