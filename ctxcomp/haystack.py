"""Haystack integration (the `haystack` extra): a component backed by a ctxcomp server.

    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store))
    pipeline.add_component("compressor", CtxcompDocumentCompressor(address="localhost:50051", method="exit"))
    pipeline.connect("retriever.documents", "compressor.documents")
    pipeline.run({"retriever": {"query": q}, "compressor": {"query": q}})

Documents travel by position (ctxcomp.frameworks) and come back as copies with
the compressed content: id, meta and the retriever's score are kept;
`meta["ctxcomp"]` adds the method's figures (score, kept spans, token counts).
`run_async` uses grpc.aio, not a thread. The bearer token is a Haystack Secret
(CTXCOMP_TOKEN by default), so `to_dict` never writes it out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import Secret, deserialize_secrets_inplace

from ctxcomp import types
from ctxcomp.frameworks import METADATA_KEY, compressions, connection_for


@component
class CtxcompDocumentCompressor:
    """Compresses `documents` against `query`; documents compressed to nothing are left out (drop_empty).

    method: compression method (or chain), empty for the server's default; rate or target_tokens:
    the budget; options: method options; order: original, relevance, or edges; document_format:
    "html" when the documents' content is HTML pages (html_output: return simplified HTML).
    """

    def __init__(
        self,
        address: str,
        method: str = "",
        rate: float | None = None,
        target_tokens: int | None = None,
        options: dict[str, Any] | None = None,
        order: str = "original",
        drop_empty: bool = True,
        document_format: str = "text",
        html_output: bool = False,
        llm: str = "",
        token: Secret | None = Secret.from_env_var("CTXCOMP_TOKEN", strict=False),
        timeout: float = 60.0,
    ) -> None:
        self.address, self.method, self.rate, self.target_tokens = address, method, rate, target_tokens
        self.options, self.order, self.drop_empty = dict(options or {}), order, drop_empty
        self.document_format, self.html_output, self.llm = document_format, html_output, llm
        self.token, self.timeout = token, timeout
        self.connection = connection_for(self, token.resolve_value() if token else "")

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, address=self.address, method=self.method, rate=self.rate, target_tokens=self.target_tokens,
            options=self.options, order=self.order, drop_empty=self.drop_empty,
            document_format=self.document_format, html_output=self.html_output, llm=self.llm, token=self.token.to_dict() if self.token else None, timeout=self.timeout,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CtxcompDocumentCompressor":
        deserialize_secrets_inplace(data["init_parameters"], keys=["token"])
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document]) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        result = self.connection.compress(query, [d.content or "" for d in documents])
        return {"documents": _from_ctxcomp(documents, result, self.drop_empty)}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document]) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        result = await self.connection.acompress(query, [d.content or "" for d in documents])
        return {"documents": _from_ctxcomp(documents, result, self.drop_empty)}


def _from_ctxcomp(documents: list[Document], result: types.CompressResult, drop_empty: bool) -> list[Document]:
    out = []
    for compressed in compressions(result, drop_empty):
        original = documents[compressed.position]
        meta = {**original.meta, METADATA_KEY: compressed.stats}
        out.append(dataclasses.replace(original, content=compressed.text, meta=meta))
    return out
