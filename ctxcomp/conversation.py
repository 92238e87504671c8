"""Conversations (chat-style RAG): the history is context, compressed like the documents.

A request may carry `messages`, oldest first. The latest user message is the query
(unless `query` is given). What stays verbatim: system messages (instructions), the
latest user message and everything after it, and the `verbatim_turns` exchanges before
it. The older messages are compressed in one of two history modes:
  relevance  (default) every older user or assistant message joins the documents, so it is
             judged by relevance to the query and cut under the same budget; an old turn
             about something else goes whole, one that answers the question stays
  stable     older user messages stay whole and each older assistant message is compressed
             on its own against the user message it answered, at the request's rate: its
             text never depends on later turns, so turn after turn the history is the same
             prefix and its KV chunks are reused (ctxcomp.kv.chunks); only what is new is
             prefilled
`prompt` renders the result with the downstream LLM's chat template (documents in the
latest user message, after the history), which is what a conversation's KV blob holds.

  check   roles, sizes and a query, each error naming its field (messages[i].role...)
  expand  the request with the older messages appended as documents (ids that no client
          document can take: they start with a NUL character)
  split   the method's output back into documents and messages
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from ctxcomp.errors import InvalidRequest, quoted
from ctxcomp.types import CompressRequest, Document, DocumentResult, MessageResult, Span

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
_MESSAGE_ID = "\0messages[{}]"


@dataclass(frozen=True)
class Layout:
    """Which messages of a request went to the method, and under which document ids."""

    roles: tuple[str, ...]
    contents: tuple[str, ...]
    compressed: dict[str, int]  # document id -> message index
    tokens: tuple[int, ...] = ()  # downstream-LLM tokens of every message (set by the pipeline)
    latest_user: int = -1  # the message holding the query (-1: the query came apart, see `query`)
    query: str = ""
    side_queries: dict[str, str] | None = None  # stable mode: document id -> the question it answered


def check(request: CompressRequest, max_messages: int, max_chars: int) -> None:
    if not request.messages:
        return
    if len(request.messages) > max_messages:
        raise InvalidRequest("messages", f"{len(request.messages)} messages, limit is {max_messages}")
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {quoted(message.role)}")
        if len(message.content) > max_chars:
            raise InvalidRequest(f"messages[{i}].content", f"{len(message.content)} characters, limit is {max_chars}")
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
    stable = request.history_mode == "stable"
    compressed = {
        _MESSAGE_ID.format(i): i for i, m in enumerate(request.messages)
        if i not in keep and m.content.strip() and (m.role == "assistant" or not stable)
    }
    last = latest_user(request)
    query = request.query if request.query.strip() else request.messages[last].content  # type: ignore[index]
    layout = Layout(tuple(m.role for m in request.messages), tuple(m.content for m in request.messages), compressed,
                    latest_user=-1 if last is None else last, query=query)
    if stable:
        asked = {doc_id: _question_before(request, i) or query for doc_id, i in compressed.items()}
        return replace(request, query=query), replace(layout, side_queries=asked)
    history = tuple(Document(doc_id, request.messages[i].content) for doc_id, i in compressed.items())
    return replace(request, query=query, documents=request.documents + history), layout


def _question_before(request: CompressRequest, index: int) -> str:
    for message in reversed(request.messages[:index]):
        if message.role == "user" and message.content.strip():
            return message.content
    return ""


def side_requests(
    request: CompressRequest, layout: Layout | None, documents_tokens: int
) -> list[tuple[CompressRequest, int]]:
    """Stable mode: one request per older assistant message, against its own question, at the
    request's rate (a token budget becomes the rate it is of the documents and that history),
    with that message's token count. Empty in relevance mode and without a conversation."""
    if layout is None or not layout.side_queries:
        return []
    rate = request.rate
    if rate is None and request.target_tokens is not None:
        history = sum(layout.tokens[i] for i in layout.compressed.values()) if layout.tokens else 0
        rate = min(1.0, request.target_tokens / max(1, documents_tokens + history))
    return [
        (replace(request, query=question, documents=(Document(doc_id, layout.contents[layout.compressed[doc_id]]),),
                 messages=(), rate=rate, target_tokens=None, order="original"),
         layout.tokens[layout.compressed[doc_id]] if layout.tokens else 0)
        for doc_id, question in layout.side_queries.items()
    ]


def prompt(tokenizer: PreTrainedTokenizerBase, layout: Layout, messages: Sequence[MessageResult], context: str) -> str:
    """The conversation as the downstream LLM reads it: its chat template over the messages that
    kept text, the documents' context put in the latest user message before its question (a
    user message of its own, with the query, when the conversation has none)."""
    chat = []
    for i, message in enumerate(messages):
        text = message.text
        if i == layout.latest_user and context:
            text = f"Documents:\n{context}\n\nQuestion: {text}"
        if text:
            chat.append({"role": message.role, "content": text})
    if layout.latest_user < 0:
        chat.append({"role": "user", "content": f"Documents:\n{context}\n\nQuestion: {layout.query}" if context
                     else layout.query})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return "".join(f"{turn['role']}: {turn['content']}\n" for turn in chat) + "assistant:"


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
