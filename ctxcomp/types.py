"""Typed requests and results. Everything a client sends comes back by document id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # results carry them; the types are imported only by a type checker
    from ctxcomp.kv.stage import KvBlob
    from ctxcomp.soft import SoftTokens


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    format: str = "text"  # or "html" (see ctxcomp.webpage)


@dataclass(frozen=True)
class Message:
    """One message of a conversation: role "system", "user" or "assistant"."""

    role: str
    content: str


# How the compressed documents are joined: as sent; most relevant first; or most relevant at
# both ends and least relevant in the middle, where long-context LLMs read worst.
ORDERS = ("original", "relevance", "edges")


@dataclass(frozen=True)
class CompressRequest:
    """One compression request.

    Exactly one of `rate` (kept share of tokens, in (0, 1]) and `target_tokens`
    (budget in downstream-LLM tokens over all documents) may be set; with
    neither, the method's preset decides.
    """

    query: str
    documents: tuple[Document, ...]
    method: str = ""  # "" = the server's default method
    rate: float | None = None
    target_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    return_kv: bool = False
    return_word_labels: bool = False
    kv_codec: str = ""  # with return_kv: fp16 (default), bf16, int8, int4, transform, headpca (ctxcomp.kv.blob.CODECS)
    kv_model: str = ""  # with return_kv: fingerprint or id of the model; empty = the server's
    kv_best_effort: bool = False  # with return_kv: a KV store outage gives the text without a blob, not an error
    order: str = "original"  # documents' order in the result: original, relevance, edges (see ORDERS)
    html_output: bool = False  # HTML documents come back as simplified HTML, not text
    messages: tuple[Message, ...] = ()  # a conversation; see ctxcomp.conversation
    verbatim_turns: int = 1  # with messages: exchanges before the latest user message kept whole
    history_mode: str = "relevance"  # with messages: "relevance" or "stable" (see ctxcomp.conversation)
    cache_salt: str = ""  # with return_kv: mixed into every stored KV key; only equal salts share KV
    llm: str = ""  # tokenizer budgets and counts are in: one the server loaded by name; "" = its LLM's
    # Who sent it, as the server authenticated them (never read from the wire): mixed into every
    # stored KV key too, so tenants never share KV (ctxcomp.service.tenants).
    tenant: str = ""


@dataclass(frozen=True)
class Span:
    """A kept character range [start, end) of the original document text."""

    start: int
    end: int


@dataclass(frozen=True)
class WordLabel:
    """One unit of the original text, its classifier score and the keep decision."""

    start: int
    end: int
    score: float
    kept: bool


@dataclass(frozen=True)
class DocumentResult:
    id: str
    text: str
    kept_spans: tuple[Span, ...]
    tokens_before: int
    tokens_after: int
    score: float
    metadata: Mapping[str, str] = field(default_factory=dict)
    word_labels: tuple[WordLabel, ...] = ()


@dataclass(frozen=True)
class MessageResult:
    """A message as it should go to the LLM: verbatim, or compressed like a document."""

    role: str
    text: str
    kept_spans: tuple[Span, ...]
    tokens_before: int
    tokens_after: int
    verbatim: bool


@dataclass(frozen=True)
class CompressResult:
    method: str
    documents: tuple[DocumentResult, ...]
    context: str
    tokens_before: int
    tokens_after: int
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    note: str = ""
    kv: KvBlob | None = None  # when return_kv was asked (server side)
    kv_keys: tuple[str, ...] = ()  # store keys of the blobs the server kept instead of sending them
    soft: SoftTokens | None = None  # from vector-output methods (xrag, comi)
    messages: tuple[MessageResult, ...] = ()  # with a conversation in the request: every message, in order
    prompt: str = ""  # with a conversation: the chat-templated prompt; a KV blob is this prompt's
    llm: str = ""  # the named tokenizer the tokens_* counts are in ("" = the server's LLM)

    @property
    def ratio(self) -> float:
        """Compression ratio, tokens_before / tokens_after (3.0 means 3x smaller)."""
        return self.tokens_before / self.tokens_after if self.tokens_after else float("inf")

    @property
    def rate(self) -> float:
        """Kept share of tokens, tokens_after / tokens_before."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0
