"""LlamaIndex integration (the `llamaindex` extra): a node postprocessor backed by a ctxcomp server.

    postprocessor = CtxcompNodePostprocessor(address="localhost:50051", method="exit", order="edges")
    engine = index.as_query_engine(similarity_top_k=8, node_postprocessors=[postprocessor])

Nodes travel by position (ctxcomp.frameworks) and come back as copies with the
compressed text: the node id, its metadata and the retriever's score are kept;
`metadata["ctxcomp"]` adds the method's figures (score, kept spans, token counts)
and is excluded from what the LLM and the embedder see. `apostprocess_nodes`
uses grpc.aio, not a thread.
"""

from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ctxcomp import types
from ctxcomp.frameworks import METADATA_KEY, Connection, compressions, connection_for


class CtxcompNodePostprocessor(BaseNodePostprocessor):
    """Compresses the retrieved nodes against the query; empty ones are left out (drop_empty)."""

    address: str = Field(description="host:port of the ctxcomp gRPC server")
    method: str = Field(default="", description="compression method (or chain); empty = the server's default")
    rate: Optional[float] = Field(default=None, description="kept share of tokens; exclusive with target_tokens")
    target_tokens: Optional[int] = Field(default=None, description="token budget over all nodes")
    options: dict[str, Any] = Field(default_factory=dict, description="method options")
    order: str = Field(default="original", description="original, relevance, or edges (most relevant first and last)")
    drop_empty: bool = Field(default=True, description="leave out nodes compressed to nothing")
    document_format: str = Field(default="text", description='"html": node texts are HTML pages')
    html_output: bool = Field(default=False, description="HTML nodes come back as simplified HTML")
    llm: str = Field(default="", description="name of your LLM's tokenizer on the server (--llm-tokenizer): budgets count in it")
    token: Optional[str] = Field(default=None, description="bearer token, when the server asks for one")
    timeout: float = 60.0
    _connection: Optional[Connection] = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "CtxcompNodePostprocessor"

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = connection_for(self)
        return self._connection

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        if not nodes:
            return []
        result = self.connection.compress(_query(query_bundle), _texts(nodes))
        return _from_ctxcomp(nodes, result, self.drop_empty)

    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        if not nodes:
            return []
        result = await self.connection.acompress(_query(query_bundle), _texts(nodes))
        return _from_ctxcomp(nodes, result, self.drop_empty)


def _query(query_bundle: Optional[QueryBundle]) -> str:
    if query_bundle is None:
        raise ValueError("CtxcompNodePostprocessor compresses against a query: pass query_bundle or query_str")
    return query_bundle.query_str


def _texts(nodes: List[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def _from_ctxcomp(nodes: List[NodeWithScore], result: types.CompressResult, drop_empty: bool) -> List[NodeWithScore]:
    out = []
    for compressed in compressions(result, drop_empty):
        original = nodes[compressed.position]
        node = original.node.model_copy(deep=True)  # same id_, its own metadata: the caller's node is untouched
        node.set_content(compressed.text)
        node.metadata[METADATA_KEY] = compressed.stats
        for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
            if METADATA_KEY not in excluded:
                excluded.append(METADATA_KEY)
        out.append(NodeWithScore(node=node, score=original.score))
    return out
