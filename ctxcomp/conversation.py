"""Conversations (chat-style RAG): the history is context, compressed like the documents.

A request may carry `messages`, oldest first. The latest user message is the query
(unless `query` is given). What stays verbatim: system messages (instructions), the
latest user message and everything after it, and the `verbatim_turns` exchanges before
it. Every older user or assistant message joins the documents for the method, so it is
judged by relevance to the query and cut under the same budget as the documents; an
old turn about something else goes whole, one that answers the question stays.

  check   roles, sizes and a query, each error naming its field (messages[i].role...)
  expand  the request with the older messages appended as documents (ids that no client
          document can take: they start with a NUL character)
  split   the method's output back into documents and messages
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document, DocumentResult, MessageResult, Span

ROLES = ("system", "user", "assistant")
_MESSAGE_ID = "\0messages[{}]"


@dataclass(frozen=True)
class Layout:
    """Which messages of a request went to the method, and under which document ids."""

    roles: tuple[str, ...]
    contents: tuple[str, ...]
    compressed: dict[str, int]  # document id -> message index
    tokens: tuple[int, ...] = ()  # downstream-LLM tokens of every message (set by the pipeline)


def check(request: CompressRequest, max_messages: int, max_chars: int) -> None:
    if not request.messages:
        return
    if len(request.messages) > max_messages:
        raise InvalidRequest("messages", f"{len(request.messages)} messages, limit is {max_messages}")
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {message.role!r}")
        if len(message.content) > max_chars:
            raise InvalidRequest(f"messages[{i}].content", f"{len(message.content)} characters, limit is {max_chars}")
    if request.verbatim_turns < 0:
        raise InvalidRequest("verbatim_turns", f"must not be negative, got {request.verbatim_turns}")
    if not request.query.strip() and latest_user(request) is None:
        raise InvalidRequest("messages", "needs a user message (the query) when query is empty")


def latest_user(request: CompressRequest) -> int | None:
    users = [i for i, m in enumerate(request.messages) if m.role == "user" and m.content.strip()]
    return users[-1] if users else None


def verbatim_indices(request: CompressRequest) -> set[int]:
    """System messages, the latest user message and after, and `verbatim_turns` exchanges before it."""
    last = latest_user(request)
    start = len(request.messages) if last is None else last
    users_seen = 0
    while start > 0 and users_seen < request.verbatim_turns:
        start -= 1
        users_seen += request.messages[start].role == "user"
    return {i for i, m in enumerate(request.messages) if m.role == "system" or i >= start}


def expand(request: CompressRequest) -> tuple[CompressRequest, Layout | None]:
    """The request the method sees: query set, older messages appended as documents."""
    if not request.messages:
        return request, None
    keep = verbatim_indices(request)
    compressed = {
        _MESSAGE_ID.format(i): i for i, m in enumerate(request.messages) if i not in keep and m.content.strip()
    }
    query = request.query if request.query.strip() else request.messages[latest_user(request)].content  # type: ignore[index]
    history = tuple(Document(doc_id, request.messages[i].content) for doc_id, i in compressed.items())
    layout = Layout(tuple(m.role for m in request.messages), tuple(m.content for m in request.messages), compressed)
    return replace(request, query=query, documents=request.documents + history), layout


def split(layout: Layout, documents: Sequence[DocumentResult]) -> tuple[tuple[DocumentResult, ...], tuple[MessageResult, ...]]:
    """(the client's documents, every message in order) from the method's documents."""
    by_message = {layout.compressed[d.id]: d for d in documents if d.id in layout.compressed}
    messages = []
    for i, (role, content) in enumerate(zip(layout.roles, layout.contents)):
        tokens = layout.tokens[i] if layout.tokens else 0
        if i in by_message:
            d = by_message[i]
            messages.append(MessageResult(role, d.text, d.kept_spans, d.tokens_before, d.tokens_after, False))
        else:
            spans = (Span(0, len(content)),) if content else ()
            messages.append(MessageResult(role, content, spans, tokens, tokens, True))
    return tuple(d for d in documents if d.id not in layout.compressed), tuple(messages)
