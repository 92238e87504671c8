"""What the framework integrations (LangChain, LlamaIndex, Haystack) share.

Each integration sends the texts of its own document objects by position, so ids
that are missing or repeated in the framework never matter, and maps the result
back by that position: the framework's id, metadata and score stay its own, and
the service's figures are added under one metadata key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ctxcomp import types
from ctxcomp.client import AsyncCtxcompClient, CtxcompClient
from ctxcomp.types import Document

METADATA_KEY = "ctxcomp"


@dataclass(frozen=True)
class Compression:
    """One compressed document of a result, with the position of the input it came from."""

    position: int
    text: str
    stats: dict[str, Any]  # method, tokens_before, tokens_after, score, kept_spans (and note)


@dataclass
class Connection:
    """Where the server is and what every request asks of it."""

    address: str
    request: Mapping[str, Any] = field(default_factory=dict)  # ctxcomp.client.build_request keywords
    token: str | None = None
    timeout: float = 60.0
    document_format: str = "text"  # or "html": every document is an HTML page
    _client: CtxcompClient | None = field(default=None, repr=False)

    def compress(self, query: str, texts: Sequence[str], messages: Sequence[types.Message] = ()) -> types.CompressResult:
        if self._client is None:
            self._client = CtxcompClient(self.address, timeout=self.timeout, token=self.token)
        return self._client.compress(query, self._documents(texts), messages=messages, **self.request)

    async def acompress(
        self, query: str, texts: Sequence[str], messages: Sequence[types.Message] = ()
    ) -> types.CompressResult:
        # grpc.aio channels belong to one event loop; a channel per call is safe under any loop.
        client = AsyncCtxcompClient(self.address, timeout=self.timeout, token=self.token)
        try:
            return await client.compress(query, self._documents(texts), messages=messages, **self.request)
        finally:
            await client.close()

    def _documents(self, texts: Sequence[str]) -> list[Document]:
        return [Document(str(i), text, format=self.document_format) for i, text in enumerate(texts)]


def connection_for(settings: Any, token: str | None = None) -> Connection:
    """The Connection a wrapper's fields describe (address, method, rate, target_tokens, options,
    order, html_output, llm, document_format, token, timeout); `token` overrides settings.token."""
    request = request_options(
        settings.method, settings.rate, settings.target_tokens, settings.options, settings.order, settings.html_output,
        settings.llm)
    return Connection(settings.address, request, token if token is not None else settings.token, settings.timeout,
                      settings.document_format)


def request_options(
    method: str, rate: float | None, target_tokens: int | None, options: Mapping[str, Any], order: str,
    html_output: bool = False, llm: str = "",
) -> dict[str, Any]:
    return {"method": method, "rate": rate, "target_tokens": target_tokens, "options": dict(options), "order": order,
            "html_output": html_output, "llm": llm}


def compressions(result: types.CompressResult, drop_empty: bool) -> list[Compression]:
    """The result's documents in the result's order (the request's `order`), empty ones left out
    when drop_empty. Positions index the texts that were sent."""
    out = []
    for compressed in result.documents:
        if drop_empty and not compressed.text:
            continue
        stats = {
            "method": result.method,
            "tokens_before": compressed.tokens_before,
            "tokens_after": compressed.tokens_after,
            "score": compressed.score,
            "method_score": compressed.method_score,
            "kept_spans": [(s.start, s.end) for s in compressed.kept_spans],
        }
        if result.note:
            stats["note"] = result.note
        out.append(Compression(int(compressed.id), compressed.text, stats))
    return out
