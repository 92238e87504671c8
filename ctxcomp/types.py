"""Typed requests and results. Everything a client sends comes back by document id."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping

from ctxcomp.errors import InvalidRequest, quoted

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
# How older messages of a conversation are compressed (see ctxcomp.conversation).
HISTORY_MODES = ("relevance", "stable")
MAX_CACHE_SALT_CHARS = 256


@dataclass(frozen=True)
class FieldSpec:
    """What one request field means and accepts: the one place its help, choices and range are
    written. The wire (ctxcomp.wire), the client's keywords (ctxcomp.client.build_request), the
    CLI's flags (`ctxcomp compress`) and validation (`check_fields`) all read it, so a field
    added to CompressRequest with its proto field reaches every way in."""

    help: str
    choices: tuple[str, ...] = ()
    above: float | None = None  # values must be greater than this
    at_least: float | None = None
    at_most: float | None = None
    max_chars: int | None = None
    flag: str = ""  # `ctxcomp compress`'s flag, where it is not --NAME-WITH-DASHES
    not_on_cli: str = ""  # why `ctxcomp compress` offers no flag for it ("": it offers one)
    on_wire: bool = True  # False: set by the server, never read from a client

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None (None itself is "not set" and always accepted)."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {quoted(value)}"
        if self.max_chars is not None and len(value) > self.max_chars:
            return f"{len(value)} characters, limit is {self.max_chars}"
        low_ok = (self.above is None or value > self.above) and (self.at_least is None or value >= self.at_least)
        if low_ok and (self.at_most is None or value <= self.at_most):
            return None
        return f"must be {self.range_text()}, got {value}"

    def range_text(self) -> str:
        if self.at_most is not None:
            low = f"({self.above:g}" if self.above is not None else f"[{self.at_least:g}"
            return f"in {low}, {self.at_most:g}]"
        if self.above == 0:
            return "positive"
        if self.at_least == 0:
            return "at least 0"
        return f"greater than {self.above:g}" if self.above is not None else f"at least {self.at_least:g}"


def declared(default: Any = MISSING, *, factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field carrying its FieldSpec (`help=`, `choices=`, ranges, ...)."""
    return field(default=default, default_factory=factory, metadata={"spec": FieldSpec(**spec)})


@dataclass(frozen=True)
class CompressRequest:
    """One compression request.

    Exactly one of `rate` (kept share of tokens, in (0, 1]) and `target_tokens`
    (budget in downstream-LLM tokens over all documents) may be set; with
    neither, the method's preset decides. Each field's meaning is its FieldSpec's help.
    """

    query: str = declared(help="the question the documents should answer; may be empty with messages")
    documents: tuple[Document, ...] = declared(help="what the retriever found",
                                               not_on_cli="read from the JSONL input")
    method: str = declared("", help="a name from ListMethods, or stages joined by '>'; empty: the server's default")
    rate: float | None = declared(None, above=0, at_most=1, help="kept share of tokens, in (0, 1]")
    target_tokens: int | None = declared(None, above=0, help="token budget over all documents")
    options: Mapping[str, Any] = declared(factory=dict, flag="option", help="method options by name (see ListMethods)")
    return_kv: bool = declared(False, help="also compute the downstream LLM's KV cache for the compressed context",
                               not_on_cli="KV blobs are bytes for a program: the Python client (compress_with_kv)")
    return_word_labels: bool = declared(False, flag="word-labels", help="per-word scores and keep decisions")
    kv_codec: str = declared("", help="with return_kv: fp16 (default), bf16, int8, int4, transform or headpca "
                                      "(ctxcomp.kv.blob.CODECS)", not_on_cli="with return_kv")
    kv_model: str = declared("", help="with return_kv: the model the KV is for, by fingerprint or id; any model but "
                                      "the server's LLM is refused, so a blob never comes from a model the caller did "
                                      "not expect; empty: the server's LLM",
                             not_on_cli="with return_kv")
    kv_best_effort: bool = declared(False, help="with return_kv: a KV store outage gives the text without a blob, "
                                                "not an error", not_on_cli="with return_kv")
    order: str = declared("original", choices=ORDERS,
                          help="the documents' order in the result: as sent, most relevant first, or most "
                               "relevant at both ends (needs a query)")
    html_output: bool = declared(False, help='documents with format "html" come back as simplified HTML, not text')
    messages: tuple[Message, ...] = declared(factory=tuple, help="a conversation, oldest first (ctxcomp.conversation)",
                                             not_on_cli="a conversation is structured input: the Python client")
    verbatim_turns: int = declared(1, at_least=0, not_on_cli="with messages",
                                   help="with messages: exchanges before the latest user message kept whole")
    history_mode: str = declared("relevance", choices=HISTORY_MODES, not_on_cli="with messages",
                                 help="with messages: compress older messages by relevance, or keep the history a "
                                      "stable prefix")
    cache_salt: str = declared("", max_chars=MAX_CACHE_SALT_CHARS, not_on_cli="with return_kv",
                               help="with return_kv: mixed into every stored KV key; only equal salts share KV")
    llm: str = declared("", help="the tokenizer the budget and every tokens_* count are in: the name of one the "
                                 "server loaded (`ctxcomp serve --llm-tokenizer NAME=ID`); empty: its LLM's")
    # Who sent it, as the server authenticated them: mixed into every stored KV key too, so
    # tenants never share KV (ctxcomp.service.tenants).
    tenant: str = declared("", on_wire=False, help="the authenticated tenant (set by the server)")


def request_fields() -> tuple[tuple[Field, FieldSpec], ...]:
    """CompressRequest's fields with their specs, in declaration order."""
    return tuple((f, f.metadata["spec"]) for f in fields(CompressRequest))


def field_default(spec_field: Field) -> Any:
    """The field's default value; MISSING for a field every request must give (query, documents)."""
    if spec_field.default is MISSING and spec_field.default_factory is not MISSING:
        return spec_field.default_factory()
    return spec_field.default


def check_fields(request: CompressRequest) -> None:
    """Raise InvalidRequest naming the first field outside its declared choices or range."""
    for spec_field, spec in request_fields():
        problem = spec.problem(getattr(request, spec_field.name))
        if problem:
            raise InvalidRequest(spec_field.name, problem)


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
    score: float  # the relevance model's probability for the query, whatever the method (0 without a query)
    metadata: Mapping[str, str] = field(default_factory=dict)
    word_labels: tuple[WordLabel, ...] = ()
    method_score: float = 0.0  # the method's own score for the document, where it has one


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
