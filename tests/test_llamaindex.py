"""LlamaIndex: the node postprocessor in a real query pipeline over an in-memory vector index
(embedded by our shipped MiniLM), against a real loopback server."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.bridge.pydantic import PrivateAttr  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode  # noqa: E402

from ctxcomp.llamaindex import CtxcompNodePostprocessor  # noqa: E402

CORPUS = [
    "The Vasa was a Swedish warship built between 1626 and 1628 for King Gustavus Adolphus.",
    "The Vasa sank on her maiden voyage in 1628 because she was top-heavy: too much weight above the waterline.",
    "The ship was salvaged in 1961 and now stands in the Vasa Museum in Stockholm.",
    "Stockholm weather in November is cold and grey, with about seven hours of daylight.",
    "Sourdough bread rises because wild yeast ferments the dough over many hours.",
]
QUERY = "Why did the Vasa sink?"


class MiniLMEmbedding(BaseEmbedding):
    """The shipped sentence encoder as a LlamaIndex embedding model (real vectors, no download)."""

    _encoder: Any = PrivateAttr()

    def __init__(self, encoder: Any) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2")
        self._encoder = encoder

    def _embed(self, texts: List[str]) -> List[List[float]]:
        return self._encoder.encode(texts, normalize_embeddings=True).tolist()

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._embed(texts)


@pytest.fixture(scope="module")
def index(hub) -> VectorStoreIndex:
    nodes = [TextNode(text=t, id_=f"node-{i}", metadata={"source": f"doc-{i}"}) for i, t in enumerate(CORPUS)]
    return VectorStoreIndex(nodes, embed_model=MiniLMEmbedding(hub.get("sentence_encoder")))


def retrieved(index: VectorStoreIndex) -> list[NodeWithScore]:
    return index.as_retriever(similarity_top_k=len(CORPUS)).retrieve(QUERY)


def test_ids_metadata_and_scores_are_kept_and_stats_added(server, index) -> None:
    nodes = retrieved(index)
    out = CtxcompNodePostprocessor(address=server.address, rate=0.5, drop_empty=False).postprocess_nodes(
        nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == [n.node.node_id for n in nodes]
    for original, compressed in zip(nodes, out):
        assert compressed.score == original.score  # the retriever's score stays; the method's is in metadata
        stats = compressed.node.metadata.pop("ctxcomp")
        assert compressed.node.metadata == original.node.metadata
        text = original.node.get_content()
        assert compressed.node.get_content() == " ".join(text[a:b] for a, b in stats["kept_spans"])
        assert stats["tokens_after"] <= stats["tokens_before"] and isinstance(stats["score"], float)
    assert "ctxcomp" not in nodes[0].node.metadata  # the caller's nodes are not changed
    assert sum(len(n.node.get_content()) for n in out) < sum(len(n.node.get_content()) for n in nodes)


def test_async_matches_the_blocking_one(server, index) -> None:
    postprocessor = CtxcompNodePostprocessor(address=server.address, method="exit")
    nodes = retrieved(index)
    blocking = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    asynchronous = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str=QUERY))
    assert [(n.node.node_id, n.node.get_content()) for n in asynchronous] == [
        (n.node.node_id, n.node.get_content()) for n in blocking]
    assert any("top-heavy" in n.node.get_content() for n in blocking)
    assert len(blocking) < len(nodes)  # EXIT emptied the unrelated nodes; they are left out


def test_query_engine_sends_the_compressed_nodes_to_the_llm(server, index) -> None:
    """A real query pipeline: retriever, our postprocessor, response synthesis. The MockLLM answers
    with its prompt, so the answer shows exactly what the LLM was given."""
    engine = index.as_query_engine(
        similarity_top_k=len(CORPUS), llm=MockLLM(), response_mode="compact",
        node_postprocessors=[CtxcompNodePostprocessor(address=server.address, method="exit", order="relevance")],
    )
    response = engine.query(QUERY)
    prompt = str(response)
    assert "top-heavy" in prompt
    assert "Sourdough" not in prompt and "ctxcomp" not in prompt and "kept_spans" not in prompt
    assert response.source_nodes and all("ctxcomp" in n.node.metadata for n in response.source_nodes)
    scores = [n.node.metadata["ctxcomp"]["score"] for n in response.source_nodes]
    assert scores == sorted(scores, reverse=True)  # order="relevance" came back from the server
    assert "ctxcomp" not in response.source_nodes[0].node.get_content(metadata_mode=MetadataMode.LLM)


def test_a_query_is_required(server) -> None:
    with pytest.raises(ValueError, match="query"):
        CtxcompNodePostprocessor(address=server.address).postprocess_nodes([NodeWithScore(node=TextNode(text="x"))])
