"""LangChain integration (the `langchain` extra): a document compressor and a retriever wrapper.

    compressor = CtxcompCompressor(address="localhost:50051", method="exit")
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    # or, in one object:
    retriever = CtxcompRetriever(base_retriever=base, address="localhost:50051", k=4)

Both talk to a running ctxcomp server over gRPC (`acompress_documents` uses
grpc.aio, not a thread). Documents travel by position and come back by position
(ctxcomp.frameworks), so every Document keeps its own metadata object untouched
except for the added `ctxcomp` entry with the compression figures; nothing is
put into the text.
"""

from __future__ import annotations

from typing import Any, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from ctxcomp import types
from ctxcomp.frameworks import METADATA_KEY, Connection, compressions, connection_for


class CtxcompCompressor(BaseDocumentCompressor):
    """`BaseDocumentCompressor` backed by a ctxcomp server.

    Returns the compressed documents in the order given (or empty ones left out,
    see drop_empty), each a new Document with the same id and a copy of its
    metadata plus `metadata["ctxcomp"]`: method, tokens_before, tokens_after,
    score, kept_spans.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    address: str = Field(description="host:port of the ctxcomp gRPC server")
    method: str = Field(default="", description="compression method (or chain); empty = the server's default")
    rate: float | None = Field(default=None, description="kept share of tokens; exclusive with target_tokens")
    target_tokens: int | None = Field(default=None, description="token budget over all documents")
    options: dict[str, Any] = Field(default_factory=dict, description="method options")
    order: str = Field(default="original", description="original, relevance, or edges (most relevant first and last)")
    drop_empty: bool = Field(default=True, description="leave out documents compressed to nothing")
    document_format: str = Field(default="text", description='"html": page_content is an HTML page')
    html_output: bool = Field(default=False, description="HTML documents come back as simplified HTML")
    llm: str = Field(default="", description="name of your LLM's tokenizer on the server (--llm-tokenizer): budgets count in it")
    token: str | None = Field(default=None, description="bearer token, when the server asks for one")
    timeout: float = 60.0
    _connection: Connection | None = PrivateAttr(default=None)

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = connection_for(self)
        return self._connection

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        result = self.connection.compress(query, [d.page_content for d in documents])
        return _from_ctxcomp(documents, result, self.drop_empty)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        result = await self.connection.acompress(query, [d.page_content for d in documents])
        return _from_ctxcomp(documents, result, self.drop_empty)

    def compress_conversation(
        self, documents: Sequence[Document], messages: Sequence[BaseMessage]
    ) -> tuple[list[Document], list[BaseMessage]]:
        """Chat-style RAG: the latest HumanMessage is the query; system messages and the newest
        exchange stay verbatim, older turns are compressed with the documents (ctxcomp.conversation).
        Returns the documents and the messages to send, each message of the class it came in."""
        result = self.connection.compress("", [d.page_content for d in documents], _to_ctxcomp_messages(messages))
        return _from_ctxcomp(documents, result, self.drop_empty), _from_ctxcomp_messages(messages, result)


class CtxcompRetriever(BaseRetriever):
    """A base retriever followed by ctxcomp: fetch, compress, return the best `k` documents.

    Documents are ranked by the method's relevance score (ties keep the base
    retriever's order). `k` may also be passed per call: `invoke(query, k=3)`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_retriever: BaseRetriever
    address: str
    k: int = 4
    method: str = ""
    rate: float | None = None
    target_tokens: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    llm: str = ""
    token: str | None = None
    timeout: float = 60.0
    _compressor: CtxcompCompressor | None = PrivateAttr(default=None)

    @property
    def compressor(self) -> CtxcompCompressor:
        if self._compressor is None:
            self._compressor = CtxcompCompressor(
                address=self.address, method=self.method, rate=self.rate, target_tokens=self.target_tokens,
                options=self.options, llm=self.llm, token=self.token, timeout=self.timeout,
            )
        return self._compressor

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        found = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        return _best(self.compressor.compress_documents(found, query), k or self.k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        found = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return _best(await self.compressor.acompress_documents(found, query), k or self.k)


def _from_ctxcomp(documents: Sequence[Document], result: types.CompressResult, drop_empty: bool) -> list[Document]:
    out = []
    for compressed in compressions(result, drop_empty):
        original = documents[compressed.position]
        metadata = {**original.metadata, METADATA_KEY: compressed.stats}
        out.append(Document(page_content=compressed.text, metadata=metadata, id=original.id))
    return out


_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def _to_ctxcomp_messages(messages: Sequence[BaseMessage]) -> list[types.Message]:
    out = []
    for i, message in enumerate(messages):
        if message.type not in _ROLES or not isinstance(message.content, str):
            raise ValueError(f"messages[{i}]: only text Human, AI and System messages can be compressed")
        out.append(types.Message(_ROLES[message.type], message.content))
    return out


def _from_ctxcomp_messages(messages: Sequence[BaseMessage], result: types.CompressResult) -> list[BaseMessage]:
    kinds = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}
    return [
        original if compressed.verbatim else kinds[compressed.role](content=compressed.text)
        for original, compressed in zip(messages, result.messages)
    ]


def _best(documents: Sequence[Document], k: int) -> list[Document]:
    ranked = sorted(enumerate(documents), key=lambda pair: (-pair[1].metadata[METADATA_KEY]["score"], pair[0]))
    return [d for _, d in ranked[:k]]
