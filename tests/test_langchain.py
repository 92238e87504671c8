"""LangChain: the standard retriever suite, metadata by id, and ContextualCompressionRetriever."""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("langchain_core")
from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from ctxcomp.langchain import CtxcompCompressor, CtxcompRetriever  # noqa: E402

CORPUS = [
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50.",
    "Von Miller, a Denver linebacker, was named the most valuable player of Super Bowl 50.",
    "Beyonce and Bruno Mars performed at the halftime show of the game.",
    "The Panthers had finished the regular season with a 15-1 record.",
    "Sourdough bread rises because wild yeast ferments the dough over many hours.",
]


class KeywordRetriever(BaseRetriever):
    """A real, tiny base retriever: documents ranked by words shared with the query."""

    documents: list[Document]
    limit: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        words = set(re.findall(r"\w+", query.lower()))
        scored = sorted(self.documents, key=lambda d: -len(words & set(re.findall(r"\w+", d.page_content.lower()))))
        return scored[: self.limit]


def corpus() -> list[Document]:
    return [Document(page_content=t, metadata={"source": f"doc-{i}", "rank": i}, id=f"id-{i}") for i, t in enumerate(CORPUS)]


class TestCtxcompRetrieverStandard(RetrieversIntegrationTests):
    """langchain_tests' own suite against a real in-process server."""

    address = ""

    @pytest.fixture(autouse=True)
    def _running_server(self, server) -> None:
        type(self).address = server.address

    @property
    def retriever_constructor(self) -> type[CtxcompRetriever]:
        return CtxcompRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"base_retriever": KeywordRetriever(documents=corpus()), "address": self.address, "rate": 0.6}

    @property
    def retriever_query_example(self) -> str:
        return "Who won Super Bowl 50?"


def test_metadata_survives_and_stats_are_added(server) -> None:
    docs = corpus()[:3]
    compressor = CtxcompCompressor(address=server.address, rate=0.5, drop_empty=False)
    out = compressor.compress_documents(docs, "Who won Super Bowl 50?")
    assert [d.id for d in out] == ["id-0", "id-1", "id-2"]  # emptied ones too: drop_empty=False
    for original, compressed in zip(docs, out):
        stats = compressed.metadata.pop("ctxcomp")
        assert compressed.metadata == original.metadata
        assert stats["tokens_after"] <= stats["tokens_before"]
        assert compressed.page_content == " ".join(original.page_content[a:b] for a, b in stats["kept_spans"])
    assert "ctxcomp" not in docs[0].metadata  # the caller's documents are not changed


def test_async_compression_matches_the_blocking_one(server) -> None:
    compressor = CtxcompCompressor(address=server.address, method="exit")
    docs = corpus()
    blocking = compressor.compress_documents(docs, "Who was the most valuable player?")
    asynchronous = asyncio.run(compressor.acompress_documents(docs, "Who was the most valuable player?"))
    assert [(d.id, d.page_content) for d in asynchronous] == [(d.id, d.page_content) for d in blocking]
    assert any("Von Miller" in d.page_content for d in blocking)
    assert len(blocking) < len(docs)  # EXIT emptied the unrelated documents; they are left out


def test_works_inside_contextual_compression_retriever(server) -> None:
    try:
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ImportError:  # older LangChain keeps it in langchain.retrievers
        from langchain.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(
        base_compressor=CtxcompCompressor(address=server.address, method="recomp_extractive", options={"top_k": 1, "rate": 1.0}),
        base_retriever=KeywordRetriever(documents=corpus()),
    )
    found = retriever.invoke("Where was Super Bowl 50 played?")
    assert len(found) == 1
    assert "Levi's Stadium" in found[0].page_content
    assert found[0].metadata["source"] == "doc-0"


def test_order_comes_back_from_the_server_as_the_documents_order(server, compressor) -> None:
    """`order` travels over the wire, and the LangChain documents follow the server's order."""
    from ctxcomp import types

    docs = corpus()
    query = "Who was the most valuable player of Super Bowl 50?"
    in_process = compressor.compress(types.CompressRequest(
        query, tuple(types.Document(str(i), d.page_content) for i, d in enumerate(docs)), rate=0.9, order="edges"))
    expected = [docs[int(d.id)].id for d in in_process.documents if d.text]
    out = CtxcompCompressor(address=server.address, rate=0.9, order="edges").compress_documents(docs, query)
    assert [d.id for d in out] == expected != [d.id for d in docs if d.id in expected]
    assert out[0].id == "id-2"  # Von Miller's document: the most relevant goes first


def test_html_pages_through_the_compressor(server) -> None:
    page = Document(page_content="<html><body><nav class='menu'>Home | Shop</nav><p>Von Miller was named the most "
                                 "valuable player of Super Bowl 50.</p><footer>Contact</footer></body></html>", id="p")
    out = CtxcompCompressor(address=server.address, document_format="html", html_output=True, rate=0.9).compress_documents(
        [page], "Who was the most valuable player?")
    assert out[0].page_content.startswith("<p>") and "Von Miller" in out[0].page_content and "Shop" not in out[0].page_content


def test_a_conversation_through_the_compressor(server) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    history = [
        SystemMessage("Answer from the documents."),
        HumanMessage("Where was Super Bowl 50 played?"),
        AIMessage("At Levi's Stadium in Santa Clara, California, on February 7, 2016."),
        HumanMessage("What bread did you bake last weekend?"),
        AIMessage("A sourdough loaf that rose overnight with wild yeast."),
        HumanMessage("Who won the game?"),
        AIMessage("The Denver Broncos won, 24-10."),
        HumanMessage("Who was the most valuable player of Super Bowl 50?"),
    ]
    documents, messages = CtxcompCompressor(address=server.address, rate=0.5).compress_conversation(corpus()[:3], history)
    assert [type(m) for m in messages] == [type(m) for m in history]
    assert messages[0] is history[0] and messages[-3:] == history[-3:]  # system and the newest exchange: verbatim
    assert messages[4].content == ""  # the bread answer is off-topic and goes whole
    assert any("Von Miller" in d.page_content for d in documents)
