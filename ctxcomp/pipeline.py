"""The request path: validate, expand a conversation and count -> html (pages to text) -> relevance (selective) -> compress (method or
chain) -> order -> html (back into the pages) -> join (documents and messages apart) -> KV.

`Compressor` is the one object a server, CLI or library user holds: it owns the
loaded models (ModelHub) and one instance of each method used so far. `plan`
validates a request and resolves what it runs, once; `run` executes planned
requests together, stage by stage.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union

import numpy as np

from ctxcomp import conversation, html_stage, methods, relevance
from ctxcomp.errors import CtxcompError, InvalidRequest, StoreUnavailable, did_you_mean, quoted
from ctxcomp.hub import ModelHub
from ctxcomp.method import Method, MethodItem, MethodOutput, describe_options
from ctxcomp.types import ORDERS, CompressRequest, CompressResult, Document, check_fields

if TYPE_CHECKING:
    from ctxcomp.kv.stage import KvBlob, KvTarget

log = logging.getLogger("ctxcomp")


@dataclass(frozen=True)
class KvSkipped:
    """A KV blob that was asked for with kv_best_effort and not made (its store was down): the
    text is served, and the note says why."""

    note: str


# What the KV stage gives a request: its blob, why it was skipped, its error, or None (not asked).
KvOutcome = Union["KvBlob", KvSkipped, CtxcompError, None]
# A request's documents as the relevance model scored them; None where it did not run.
Scored = Union[tuple[relevance.DocumentScores, ...], None]


CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Limits:
    """Request limits; the service reports them through ListMethods."""

    max_query_chars: int = 16_384
    max_documents: int = 512
    max_document_chars: int = 1_000_000
    max_total_chars: int = 8_000_000
    max_message_bytes: int = 64 * 1024 * 1024
    # Downstream-LLM tokens over all documents: a request's cost, bounded up front so that
    # one request cannot hold the model worker for minutes (one 128k-token LLM context).
    max_request_tokens: int = 131_072
    # A document's metadata comes back in its result, so it is bounded like its text: entries,
    # and key and value characters together (all documents' together too, so a response
    # echoing them stays far inside max_message_bytes).
    max_metadata_entries: int = 64
    max_metadata_chars: int = 16_384
    max_total_metadata_chars: int = 1_000_000
    # Estimated model work (see `request_costs`): refused up front past this, naming the field
    # that makes it big, rather than holding a worker for minutes. On a 2-core Xeon a unit is
    # about 0.25 ms of cascade work, so the default is about 100 s.
    max_request_cost: int = 400_000


# The unit of cost: one downstream-LLM token of document text through the default method.
# A prefill token of the downstream LLM costs more (SmolLM2-135M against MiniLM's six layers,
# and the codec after it), and an HTML page's elements are parsed, cut and aligned one by one.
KV_TOKEN_COST = 16
HTML_ELEMENT_COST = 1


def validate(request: CompressRequest, limits: Limits) -> None:
    """Raise InvalidRequest naming the first offending field (proto field paths)."""
    if len(request.query) > limits.max_query_chars:
        raise InvalidRequest("query", f"{len(request.query)} characters, limit is {limits.max_query_chars}")
    if not request.documents and not request.messages:
        raise InvalidRequest("documents", "at least one document (or a conversation in messages) is required")
    conversation.check(request, limits.max_documents, limits.max_document_chars)
    if len(request.documents) > limits.max_documents:
        raise InvalidRequest("documents", f"{len(request.documents)} documents, limit is {limits.max_documents}")
    validate_documents(request, limits)
    if request.rate is not None and request.target_tokens is not None:
        raise InvalidRequest("target", "set rate or target_tokens, not both")
    check_fields(request)  # each field's declared choices and range (ctxcomp.types)
    if request.order != "original" and not request.query.strip():
        raise InvalidRequest("order", f"{quoted(request.order)} ranks documents by relevance to the query; it must not be empty")


def validate_documents(request: CompressRequest, limits: Limits) -> None:
    html_stage.check_formats(request)
    seen: dict[str, int] = {}
    total = metadata_chars = 0
    for i, doc in enumerate(request.documents):
        if not doc.id:
            raise InvalidRequest(f"documents[{i}].id", "must not be empty")
        if doc.id in seen:
            raise InvalidRequest(f"documents[{i}].id", f"duplicate id {quoted(doc.id)} (also documents[{seen[doc.id]}])")
        seen[doc.id] = i
        if len(doc.text) > limits.max_document_chars:
            raise InvalidRequest(
                f"documents[{i}].text", f"{len(doc.text)} characters, limit is {limits.max_document_chars}"
            )
        total += len(doc.text)
        metadata_chars += check_metadata(f"documents[{i}].metadata", doc.metadata, limits)
    if total > limits.max_total_chars:
        raise InvalidRequest("documents", f"{total} characters in all, limit is {limits.max_total_chars}")
    if metadata_chars > limits.max_total_metadata_chars:
        raise InvalidRequest(
            "documents", f"{metadata_chars} metadata characters in all, limit is {limits.max_total_metadata_chars}"
        )


def check_metadata(field: str, metadata: Mapping[str, str], limits: Limits) -> int:
    """The metadata's size in characters (keys and values), or InvalidRequest naming `field`."""
    if len(metadata) > limits.max_metadata_entries:
        raise InvalidRequest(field, f"{len(metadata)} entries, limit is {limits.max_metadata_entries}")
    chars = sum(len(key) + len(value) for key, value in metadata.items())
    if chars > limits.max_metadata_chars:
        raise InvalidRequest(field, f"{chars} characters of keys and values, limit is {limits.max_metadata_chars}")
    return chars


@dataclass(frozen=True)
class Plan:
    """What a validated request will run: made once, by `Compressor.plan`."""

    request: CompressRequest
    name: str  # method name, or stage names joined by ">"
    config: Any  # the method's config with this request's options (a ChainConfig for a chain)
    kv_codec: str  # "" unless return_kv
    tokens_before: tuple[int, ...] = ()  # downstream-LLM tokens of each document: the request's cost
    planned_ms: float = 0.0  # time spent validating, counting and planning (the "validate" stage)
    conversation: conversation.Layout | None = None  # which documents are older messages

    costs: tuple[tuple[str, int], ...] = ()  # (field path, estimated cost units): see request_costs

    @property
    def cost_tokens(self) -> int:
        return sum(self.tokens_before)

    @property
    def cost(self) -> int:
        """Estimated model work, in units of a document token through the default method."""
        return sum(units for _, units in self.costs) if self.costs else self.cost_tokens


def request_costs(request: CompressRequest, tokens_before: Sequence[int], kv: bool) -> tuple[tuple[str, int], ...]:
    """Where a request's model work goes, by field: each document's tokens (and an HTML page's
    elements), and the KV prefill of the compressed context (its budget, or all of it)."""
    costs = []
    for i, (doc, tokens) in enumerate(zip(request.documents, tokens_before)):
        elements = doc.text.count("<") if doc.format == "html" else 0
        costs.append((f"documents[{i}].text", tokens + HTML_ELEMENT_COST * elements))
    if kv:
        total = sum(tokens_before)
        kept = request.target_tokens or (math.ceil(request.rate * total) if request.rate else total)
        costs.append(("return_kv", KV_TOKEN_COST * min(kept, total)))
    return tuple(costs)


def check_cost(costs: Sequence[tuple[str, int]], limit: int) -> None:
    total = sum(units for _, units in costs)
    if total > limit:
        field, units = max(costs, key=lambda part: part[1])
        raise InvalidRequest(
            field, f"the request is about {total} units of model work, over this server's max_request_cost of {limit} "
            f"(a unit is a document token through the default method); this field alone is {units}"
        )


class Compressor:
    def __init__(
        self,
        hub: ModelHub | None = None,
        limits: Limits | None = None,
        default_method: str = methods.DEFAULT_METHOD,
        kv_store: KvTarget | None = None,
        kv_chunk_tokens: int = 256,
    ) -> None:
        self.hub = hub or ModelHub()
        self.kv_store = kv_store  # where KV goes (ctxcomp.kv.stage.open_kv_store); None: blobs go back to the caller
        self.kv_chunk_tokens = kv_chunk_tokens  # with a store: chained chunks for prefix reuse (0: off)
        self.limits = limits or Limits()
        self.default_method = default_method
        self._methods: dict[str, Method] = {}
        self._ready: set[str] = set()  # methods whose models are loaded (warm_up, or a first use)
        self._lock = threading.RLock()  # re-entrant: a chain asks for its stages while being built

    def method(self, name: str) -> Method:
        """The method (or chain) of that name, built once and shared by every request."""
        with self._lock:
            if name not in self._methods:
                self._methods[name] = methods.build(name, self.hub, self.method)
            return self._methods[name]

    def warm_up(self, names: list[str] | None = None) -> dict[str, float]:
        """Load every model the named methods need (the default method's by default) and run
        the embedded sample request, then requests of real passages (`warm_up_requests`),
        through each, so that a method's first request costs what its tenth does: what is built
        or memoised on first use (encoder shapes, word token counts, tokenizer and spaCy state)
        is built here. Returns the seconds each method took."""
        self.hub.load_llm_tokenizers()
        samples = [sample_request(), *warm_up_requests()]
        seconds = {}
        for name in names or [self.default_method]:
            unavailable = self.method(name).check(self.hub)
            if unavailable:
                log.warning("method %s is not preloaded: %s", name, "; ".join(unavailable))
                continue
            started = time.perf_counter()
            self.hub.load(self.method(name).requires)
            # the samples are ours, not a client's: this server's request limits do not apply to them
            for sample in samples:
                self.run([self.plan(replace(sample, method=name), Limits())])
            self.hub.compile_shapes()
            self._ready.add(name)
            seconds[name] = time.perf_counter() - started
            log.info("method %s loaded and warmed in %.1f s", name, seconds[name])
        return seconds

    def ready(self, name: str) -> None:
        """Load the models of a method that was not warmed up, logging what its first use cost."""
        if name in self._ready:
            return
        started = time.perf_counter()
        missing = set(self.method(name).requires) - self.hub.loaded_roles()
        self.hub.load(self.method(name).requires)
        self._ready.add(name)
        if missing:
            log.info("method %s: first use loaded %s in %.1f s (a server warms it before SERVING with --preload)",
                     name, ", ".join(sorted(missing)), time.perf_counter() - started)

    def compress(self, request: CompressRequest) -> CompressResult:
        return self.compress_batch([request])[0]

    def compress_batch(self, requests: Sequence[CompressRequest]) -> list[CompressResult]:
        """Plan and run several requests together; any invalid request raises before work starts."""
        return self.run([self.plan(request) for request in requests])

    def plan(self, request: CompressRequest, limits: Limits | None = None) -> Plan:
        """Validate a request against `limits` (default: this compressor's); resolve its method
        (or chain), its config and its KV codec."""
        started = time.perf_counter()
        limits = limits or self.limits
        validate(request, limits)
        self._check_llm(request)
        with self.hub.counting(request.llm):
            return self._plan(request, started, limits)

    def _check_llm(self, request: CompressRequest) -> None:
        if not request.llm:
            return
        if request.llm not in self.hub.llm_tokenizers:
            names = sorted(self.hub.llm_tokenizers)
            loaded = f"this server counts in: {', '.join(names)}" if names else "this server loaded none (--llm-tokenizer NAME=ID)"
            raise InvalidRequest("llm", f"no tokenizer named {quoted(request.llm)}{did_you_mean(request.llm, names)}; {loaded}")
        if request.return_kv:
            raise InvalidRequest("llm", "KV blobs are the server's own LLM's: with return_kv, leave llm empty")

    def _plan(self, request: CompressRequest, started: float, limits: Limits) -> Plan:
        request, layout = conversation.expand(request)
        if layout is not None:
            validate_documents(request, limits)  # the older messages count against the limits too
        name = request.method or self.default_method
        method = self.method(name)
        config = method.configure(request.options)
        if method.needs_query and not request.query.strip():
            raise InvalidRequest("query", f"method {quoted(name)} selects by relevance to the query; it must not be empty")
        if config.selective and not request.query.strip():
            raise InvalidRequest("query", "selective augmentation judges relevance to the query; it must not be empty")
        if request.order != "original" and method.output != "text":
            raise InvalidRequest("order", f"orders a text context; method {quoted(name)} returns {method.output}")
        if layout is not None and method.output != "text":
            raise InvalidRequest("messages", f"a conversation is compressed as text; method {quoted(name)} returns {method.output}")
        codec = ""
        if request.return_kv:
            from ctxcomp.kv.stage import check_kv_request

            codec = check_kv_request(request.kv_codec, request.kv_model, self.hub, self.kv_store, request.cache_salt)
        tokens = count_within_limit(self.hub, [d.text for d in request.documents], limits.max_request_tokens)
        if layout is not None:
            layout = replace(layout, tokens=tuple(self.hub.count_tokens(list(layout.contents))))
        costs = request_costs(request, tokens, bool(codec))
        check_cost(costs, limits.max_request_cost)
        return Plan(request, name, config, codec, tokens, (time.perf_counter() - started) * 1000.0, layout, costs)

    def run(self, plans: Sequence[Plan]) -> list[CompressResult]:
        """Run planned requests together; the first request's error, if any, is raised."""
        outcomes = self.run_each(plans)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def run_each(self, plans: Sequence[Plan]) -> list[CompressResult | CtxcompError]:
        """Run planned requests together. Stage timings are the batch's, reported on every result.

        The KV stage runs per request, so its errors (an empty context, a store that is down)
        are that request's outcome; the others still get their results.
        """
        groups: dict[str, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan.request.llm, []).append(i)
        outcomes: list[CompressResult | CtxcompError] = [None] * len(plans)  # type: ignore[list-item]
        for llm, members in groups.items():  # each tokenizer's requests count in it
            with self.hub.counting(llm):
                for i, outcome in zip(members, self._run_counted([plans[i] for i in members])):
                    outcomes[i] = outcome
        return outcomes

    def _run_counted(self, plans: Sequence[Plan]) -> list[CompressResult | CtxcompError]:
        """run_each for requests that all count in the same tokenizer."""
        timings: dict[str, float] = {}
        sent, pages = plans, [html_stage.Pages({})] * len(plans)
        if any(html_stage.has_html(plan.request) for plan in plans):
            with _timed(timings, "html"):
                plans, pages = html_stage.prepare_all(self.hub, plans)
        tokens_before = [plan.tokens_before for plan in plans]
        scored: list[Scored] = [None] * len(plans)
        if any(plan.request.query.strip() for plan in plans):
            with _timed(timings, "relevance"):
                scored = relevance_stage(self.hub, plans)
        outputs: list[MethodOutput | None] = [None] * len(plans)
        if any(plan.config.selective for plan in plans):
            with _timed(timings, "relevance"):
                outputs = gate(self.hub, plans, tokens_before, scored)
        with _timed(timings, "compress"):
            outputs = self._compress(plans, tokens_before, outputs, scored)
        if any(plan.request.order != "original" for plan in plans):
            with _timed(timings, "order"):
                outputs = order_documents(self.hub, plans, outputs, scored)
        if any(p.pages for p in pages):
            with _timed(timings, "html"):
                outputs = [
                    html_stage.restore(self.hub, plan.request, plan.tokens_before, page, out)
                    for plan, page, out in zip(sent, pages, outputs)
                ]
        outputs = [with_relevance(out, probabilities(plan.request, sent_plan.request, page, scores))
                   for plan, sent_plan, page, out, scores in zip(plans, sent, pages, outputs, scored)]
        with _timed(timings, "join"):
            joined = [self._join(plan, out) for plan, out in zip(plans, outputs)]
        kv_outcomes: list[KvOutcome] = [None] * len(plans)
        if any(plan.kv_codec for plan in plans):
            with _timed(timings, "kv"):
                kv_outcomes = [self._kv(plan, j) for plan, j in zip(plans, joined)]
        return [
            kv if isinstance(kv, CtxcompError) else result(plan, out, j, kv, timings)
            for plan, out, j, kv in zip(sent, outputs, joined, kv_outcomes)
        ]

    def _join(self, plan: Plan, output: MethodOutput) -> "Joined":
        """The documents' context; with a conversation, the messages apart and the chat prompt."""
        if plan.conversation is None:
            return Joined(output.documents, (), CONTEXT_SEPARATOR.join(d.text for d in output.documents if d.text), "")
        documents, messages = conversation.split(plan.conversation, output.documents)
        context = CONTEXT_SEPARATOR.join(d.text for d in documents if d.text)
        tokenizer = self.hub.tokenizer()  # the request's own LLM's chat template, when it named one
        return Joined(documents, messages, context,
                      conversation.prompt(tokenizer, plan.conversation, messages, context))

    def _compress(
        self, plans: Sequence[Plan], tokens_before: Sequence[tuple[int, ...]], outputs: Sequence[MethodOutput | None],
        scored: Sequence[Scored],
    ) -> list[MethodOutput]:
        """One compress_many per method over the requests not already answered by the gate,
        each item with its own config."""
        done = list(outputs)
        for name in dict.fromkeys(plan.name for plan in plans):
            members = [i for i, plan in enumerate(plans) if plan.name == name and done[i] is None]
            if members:
                # A method never sees an item without documents (a conversation whose documents
                # are all in its messages, or a system message alone): its output is empty.
                compressed = [i for i in members if plans[i].request.documents]
                for i in set(members) - set(compressed):
                    done[i] = MethodOutput(())
                items = [MethodItem(plans[i].request, plans[i].config, tokens_before[i], scored[i]) for i in compressed]
                # stable conversation history: each older answer against its own question, same batch
                owners, side = [], []
                for i in members:
                    for request, tokens in conversation.side_requests(plans[i].request, plans[i].conversation,
                                                                      plans[i].cost_tokens):
                        owners.append(i)
                        side.append(MethodItem(request, plans[i].config, (tokens,)))
                if not items and not side:
                    continue
                self.ready(name)
                results = self.method(name).compress_many(items + side)
                for i, output in zip(compressed, results):
                    done[i] = output
                for i, output in zip(owners, results[len(items):]):
                    done[i] = replace(done[i], documents=done[i].documents + output.documents)  # type: ignore[arg-type]
        return done  # type: ignore[return-value]

    def _kv(self, plan: Plan, joined: Joined) -> KvOutcome:
        """The request's KvBlob; None without return_kv; its CtxcompError when it failed.
        With kv_best_effort, a store outage is a KvSkipped note, not an error."""
        from ctxcomp.kv.stage import compute_kv
        from ctxcomp.kv.store import kv_namespace

        if not plan.kv_codec:
            return None
        try:
            return compute_kv(
                self.hub, joined.prompt or joined.context, plan.kv_codec, self.kv_store,
                chunk_tokens=self.kv_chunk_tokens, templated=bool(joined.prompt),
                namespace=kv_namespace(plan.request.tenant, plan.request.cache_salt),
            )
        except StoreUnavailable as error:
            return KvSkipped(f"served without the KV blob: {error}") if plan.request.kv_best_effort else error
        except CtxcompError as error:
            return error

    def describe_methods(self) -> list[dict[str, Any]]:
        """Every registered method: description, options with defaults, models, and why it cannot run here."""
        rows = []
        for name in methods.method_names():
            method = self.method(name)
            rows.append(
                {
                    "name": name,
                    "description": method.description,
                    "options": describe_options(method.presets["default"]),
                    "models": list(method.requires),
                    "unavailable": method.check(self.hub),
                }
            )
        return rows


COUNT_GROUP_CHARS = 262_144  # characters tokenized per call while counting a request's cost


def count_within_limit(hub: ModelHub, texts: Sequence[str], limit: int) -> tuple[int, ...]:
    """Downstream-LLM tokens of each text. Texts are counted in order, in groups of about
    COUNT_GROUP_CHARS characters, so a request far over `limit` is refused (InvalidRequest
    naming documents) after its first groups instead of after tokenizing megabytes."""
    counts: list[int] = []
    start = 0
    while start < len(texts):
        end, chars = start + 1, len(texts[start])
        while end < len(texts) and chars + len(texts[end]) <= COUNT_GROUP_CHARS:
            chars += len(texts[end])
            end += 1
        counts += hub.count_tokens(texts[start:end])
        if sum(counts) > limit:
            counted = f"at least {sum(counts)}" if end < len(texts) else f"{sum(counts)}"
            raise InvalidRequest("documents", f"{counted} tokens in all, this server's max_request_tokens is {limit}")
        start = end
    return tuple(counts)


def relevance_stage(hub: ModelHub, plans: Sequence[Plan]) -> list[Scored]:
    """The relevance model's scores of each request's documents as the method sees them, one
    pass for the batch. They are every result's `score`, the order and the selective gate's
    measure, and the relevance of the methods built on it (cascade, exit, mig, llmlingua2's
    query-aware mode), which read them instead of a pass of their own. None for a request
    without a query, or where the relevance model cannot load (its results score 0)."""
    asking = [i for i, plan in enumerate(plans) if plan.request.query.strip()]
    if not asking or ("relevance" not in hub.loaded_roles() and hub.unavailable(["relevance"])):
        return [None] * len(plans)
    out: list[Scored] = [None] * len(plans)
    for i, scores in zip(asking, relevance.score(hub, [plans[i].request for i in asking])):
        out[i] = scores
    return out


def probabilities(prepared: CompressRequest, sent: CompressRequest, pages: html_stage.Pages, scores: Scored) -> dict[str, float]:
    """Document id -> the relevance model's probability. The scores are of the documents the
    method saw (`prepared`); an HTML page of `sent` gets its best node's."""
    out: dict[str, float] = {}
    for doc, doc_scores in zip(prepared.documents, scores or ()):
        part = pages.parts.get(doc.id)
        doc_id = sent.documents[part.page].id if part is not None else doc.id
        out[doc_id] = max(out.get(doc_id, 0.0), doc_scores.probability)
    return out


def with_relevance(output: MethodOutput, probability: Mapping[str, float]) -> MethodOutput:
    """The output with every document's score the relevance probability, and the method's own
    score kept as method_score."""
    documents = tuple(replace(d, score=probability.get(d.id, 0.0), method_score=d.score) for d in output.documents)
    return replace(output, documents=documents)


def order_documents(
    hub: ModelHub, plans: Sequence[Plan], outputs: Sequence[MethodOutput], scored: Sequence[Scored]
) -> list[MethodOutput]:
    """Each output's documents in its request's order, by the relevance model's document
    head over the documents as sent: the relevance stage's scores, or (where it could not run)
    a pass here, which names the missing model."""
    asking = [i for i, plan in enumerate(plans) if plan.request.order != "original"]
    missing = [i for i in asking if scored[i] is None]
    made = dict(zip(missing, relevance.score(hub, [plans[i].request for i in missing]))) if missing else {}
    done = list(outputs)
    for i in asking:
        scores = scored[i] if scored[i] is not None else made[i]
        order = join_order(np.asarray([d.relevance for d in scores]), plans[i].request.order)
        done[i] = replace(outputs[i], documents=tuple(outputs[i].documents[j] for j in order))
    return done


def join_order(relevances: np.ndarray, order: str) -> list[int]:
    """Document indices in join order. relevance: most relevant first (ties keep the sent
    order); edges: the 1st, 3rd, 5th... most relevant from the front and the 2nd, 4th...
    from the back, so the least relevant sit in the middle (Liu et al., lost in the middle)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    if order == "original":
        return list(range(len(relevances)))
    ranked = sorted(range(len(relevances)), key=lambda i: (-float(relevances[i]), i))
    if order == "relevance":
        return ranked
    return ranked[0::2] + ranked[1::2][::-1]


def gate(
    hub: ModelHub, plans: Sequence[Plan], tokens_before: Sequence[tuple[int, ...]], scored: Sequence[Scored]
) -> list[MethodOutput | None]:
    """Selective augmentation: an empty output for each selective request with no relevant
    document; None where the method still has to run."""
    outputs: list[MethodOutput | None] = [None] * len(plans)
    for i, plan in enumerate(plans):
        if plan.config.selective:
            verdict = relevance.judge(hub, plan.request, plan.config.relevance_threshold, scored[i])
            if not verdict.relevant:
                outputs[i] = relevance.empty_output(plan.request, verdict, tokens_before[i])
    return outputs


@dataclass(frozen=True)
class Joined:
    """A request's output as it is returned: its documents, its messages, the documents'
    context and (with a conversation) the chat prompt."""

    documents: tuple[Any, ...]
    messages: tuple[Any, ...]
    context: str
    prompt: str


def result(
    plan: Plan, output: MethodOutput, joined: Joined, kv: KvBlob | KvSkipped | None, timings: dict[str, float]
) -> CompressResult:
    """kv: the request's KvBlob, None, or why the blob is missing."""
    note = output.note
    if isinstance(kv, KvSkipped):
        note, kv = "; ".join(n for n in (note, kv.note) if n), None
    elif kv is not None and kv.note:
        note = "; ".join(n for n in (note, kv.note) if n)
    stored = tuple(k for k in (kv.chunk_keys or (kv.key,)) if k) if kv is not None and kv.data is None else ()
    return CompressResult(
        method=plan.name,
        documents=joined.documents,
        context=joined.context,
        tokens_before=sum(d.tokens_before for d in output.documents),
        tokens_after=sum(d.tokens_after for d in output.documents),
        timings_ms={"validate": plan.planned_ms, **timings},
        note=note,
        kv=kv,
        kv_keys=stored,
        soft=output.soft,
        messages=joined.messages,
        prompt=joined.prompt,
        llm=plan.request.llm,
    )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


WARM_UP_DOCUMENTS = 5  # documents per warm-up request, as a retriever's top 5


def warm_up_requests() -> list[CompressRequest]:
    """The shipped calibration passages (ctxcomp.models.registry.calibration_samples) as requests of
    WARM_UP_DOCUMENTS documents: text of the length and vocabulary a server sees, for its warm-up."""
    from ctxcomp.models.registry import calibration_samples

    samples = calibration_samples()
    return [
        CompressRequest(samples[at]["question"], tuple(
            Document(f"warm-{at + i}", s["text"]) for i, s in enumerate(samples[at : at + WARM_UP_DOCUMENTS])))
        for at in range(0, len(samples), WARM_UP_DOCUMENTS)
    ]


def sample_request() -> CompressRequest:
    """The embedded sample (ctxcomp/samples/rag_request.json): `make demo`'s request, and the one
    a server runs through each method it warms up."""
    sample = json.loads(resources.files("ctxcomp.samples").joinpath("rag_request.json").read_text())
    documents = tuple(Document(d["id"], d["text"], d.get("metadata", {})) for d in sample["documents"])
    return CompressRequest(sample["query"], documents)
