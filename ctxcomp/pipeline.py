"""The request path: validate -> count -> relevance (selective) -> compress (method or chain) -> join -> KV.

`Compressor` is the one object a server, CLI or library user holds: it owns the
loaded models (ModelHub) and one instance of each method used so far.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ctxcomp import methods, relevance
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.methods.chain import Chain, Stage
from ctxcomp.types import CompressRequest, CompressResult

CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Limits:
    """Request limits; the service reports them through ListMethods."""

    max_query_chars: int = 16_384
    max_documents: int = 512
    max_document_chars: int = 1_000_000
    max_total_chars: int = 8_000_000
    max_message_bytes: int = 64 * 1024 * 1024


def validate(request: CompressRequest, limits: Limits) -> None:
    """Raise InvalidRequest naming the first offending field (proto field paths)."""
    if len(request.query) > limits.max_query_chars:
        raise InvalidRequest("query", f"{len(request.query)} characters, limit is {limits.max_query_chars}")
    if not request.documents:
        raise InvalidRequest("documents", "at least one document is required")
    if len(request.documents) > limits.max_documents:
        raise InvalidRequest("documents", f"{len(request.documents)} documents, limit is {limits.max_documents}")
    seen: dict[str, int] = {}
    total = 0
    for i, doc in enumerate(request.documents):
        if not doc.id:
            raise InvalidRequest(f"documents[{i}].id", "must not be empty")
        if doc.id in seen:
            raise InvalidRequest(f"documents[{i}].id", f"duplicate id {doc.id!r} (also documents[{seen[doc.id]}])")
        seen[doc.id] = i
        if len(doc.text) > limits.max_document_chars:
            raise InvalidRequest(
                f"documents[{i}].text", f"{len(doc.text)} characters, limit is {limits.max_document_chars}"
            )
        total += len(doc.text)
    if total > limits.max_total_chars:
        raise InvalidRequest("documents", f"{total} characters in all, limit is {limits.max_total_chars}")
    if request.rate is not None and request.target_tokens is not None:
        raise InvalidRequest("target", "set rate or target_tokens, not both")
    if request.rate is not None and not 0.0 < request.rate <= 1.0:
        raise InvalidRequest("rate", f"must be in (0, 1], got {request.rate}")
    if request.target_tokens is not None and request.target_tokens <= 0:
        raise InvalidRequest("target_tokens", f"must be positive, got {request.target_tokens}")


@dataclass(frozen=True)
class Plan:
    """What a validated request will run."""

    name: str  # method name, or stage names joined by ">"
    method: Any  # a Method, or a Chain
    config: Any  # the method's config with the request's options (a tuple for a chain)
    kv_codec: str  # "" unless return_kv
    selective: bool  # run the relevance gate first
    relevance_threshold: float  # -1 = calibrated


class Compressor:
    def __init__(
        self,
        hub: ModelHub | None = None,
        limits: Limits | None = None,
        default_method: str = methods.DEFAULT_METHOD,
        kv_store: Any = None,
    ) -> None:
        self.hub = hub or ModelHub()
        self.kv_store = kv_store  # ctxcomp.kv.store.BlobStore, or None to hand blobs back
        self.limits = limits or Limits()
        self.default_method = default_method
        self._methods: dict[str, Any] = {}
        self._lock = threading.Lock()

    def method(self, name: str) -> Any:
        with self._lock:
            if name not in self._methods:
                self._methods[name] = methods.method_class(name)(self.hub)
            return self._methods[name]

    def warm_up(self, names: list[str] | None = None) -> None:
        """Load every model the named methods need (all registered methods by default)."""
        for name in names or [self.default_method]:
            self.hub.load(methods.method_class(name).requires)

    def compress(self, request: CompressRequest) -> CompressResult:
        return self.compress_batch([request])[0]

    def compress_batch(self, requests: Sequence[CompressRequest]) -> list[CompressResult]:
        """Compress several requests together; methods that can share model passes across
        requests (compress_many) do. Any invalid request raises before work starts.
        Stage timings are the batch's, reported on every result."""
        timings: dict[str, float] = {}
        with _timed(timings, "validate"):
            plans = [self.plan(request) for request in requests]
        with _timed(timings, "count"):
            counts = self.hub.count_tokens([d.text for r in requests for d in r.documents])
            bounds = np.cumsum([0] + [len(r.documents) for r in requests])
            tokens_before = [counts[bounds[i] : bounds[i + 1]] for i in range(len(requests))]
        outputs: list[Any] = [None] * len(requests)
        if any(plan.selective for plan in plans):
            with _timed(timings, "relevance"):
                for i, (request, plan) in enumerate(zip(requests, plans)):
                    if plan.selective:
                        verdict = relevance.judge(self.hub, request, plan.relevance_threshold)
                        if not verdict.relevant:
                            outputs[i] = relevance.empty_output(request, verdict, tokens_before[i])
        with _timed(timings, "compress"):
            for name in dict.fromkeys(plan.name for plan in plans):
                members = [i for i, plan in enumerate(plans) if plan.name == name and outputs[i] is None]
                if not members:
                    continue
                method = plans[members[0]].method
                if isinstance(method, Chain):
                    results = [method.compress(requests[i], tokens_before[i]) for i in members]
                elif hasattr(method, "compress_many"):
                    results = method.compress_many([(requests[i], plans[i].config, tokens_before[i]) for i in members])
                else:
                    results = [method.compress(requests[i], plans[i].config, tokens_before[i]) for i in members]
                for i, output in zip(members, results):
                    outputs[i] = output
        with _timed(timings, "join"):
            contexts = [CONTEXT_SEPARATOR.join(d.text for d in out.documents if d.text) for out in outputs]
        kv_blobs: list[Any] = [None] * len(requests)
        if any(r.return_kv for r in requests):
            from ctxcomp.kv.stage import compute_kv

            with _timed(timings, "kv"):
                for i, (request, plan) in enumerate(zip(requests, plans)):
                    if request.return_kv:
                        kv_blobs[i] = compute_kv(self.hub.llm(), contexts[i], plan.kv_codec, self.kv_store)
        return [
            CompressResult(
                method=plan.name,
                documents=out.documents,
                context=context,
                tokens_before=sum(d.tokens_before for d in out.documents),
                tokens_after=sum(d.tokens_after for d in out.documents),
                timings_ms=dict(timings),
                note=out.note,
                kv=kv,
                soft=out.soft,
            )
            for plan, out, context, kv in zip(plans, outputs, contexts, kv_blobs)
        ]

    def plan(self, request: CompressRequest) -> Plan:
        """Validate a request; resolve its method (or chain), effective config(s) and KV codec."""
        validate(request, self.limits)
        name = request.method or self.default_method
        stage_names = name.split(methods.CHAIN_SEPARATOR)
        if len(stage_names) == 1:
            method = self.method(name)
            configs = [methods.apply_options(method.presets["default"], request.options)]
            needs_query = method.needs_query
            runner: Any = method
        else:
            stages = self._chain_stages(stage_names, request.options)
            configs = [stage.config for stage in stages]
            needs_query = any(stage.method.needs_query for stage in stages)
            runner = Chain(stages)
        if needs_query and not request.query.strip():
            raise InvalidRequest("query", f"method {name!r} selects by relevance to the query; it must not be empty")
        selective = any(getattr(c, "selective", False) for c in configs)
        if selective and not request.query.strip():
            raise InvalidRequest("query", "selective augmentation judges relevance to the query; it must not be empty")
        threshold = max((getattr(c, "relevance_threshold", -1.0) for c in configs if getattr(c, "selective", False)), default=-1.0)
        codec = ""
        if request.return_kv:
            from ctxcomp.kv.stage import check_kv_request

            codec = check_kv_request(request.kv_codec, request.kv_model, self.hub.llm())
        return Plan(name, runner, configs[0] if len(configs) == 1 else tuple(configs), codec, selective, threshold)

    def _chain_stages(self, names: list[str], options: Mapping[str, Any]) -> list[Stage]:
        """Stages of a chained method; options hold one object per stage name."""
        if len(set(names)) != len(names) or "" in names:
            raise InvalidRequest("method", f"a chain names each method once, separated by '{methods.CHAIN_SEPARATOR}'")
        for key, value in options.items():
            if key not in names:
                raise InvalidRequest(f"options.{key}", f"a chained request takes one options object per stage: {', '.join(names)}")
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"options.{key}", "must be an object of that stage's options")
        stages = []
        for position, stage_name in enumerate(names):
            method = self.method(stage_name)
            if getattr(method, "output", "text") != "text" and position < len(names) - 1:
                raise InvalidRequest("method", f"{stage_name} returns vectors, not text: it can only end a chain")
            config = methods.apply_options(method.presets["default"], options.get(stage_name, {}), f"options.{stage_name}")
            stages.append(Stage(stage_name, method, config))
        return stages

    def describe_methods(self) -> list[dict[str, Any]]:
        rows = []
        for name in methods.method_names():
            cls = methods.method_class(name)
            rows.append(
                {
                    "name": name,
                    "description": cls.description,
                    "options": methods.describe_options(cls.presets["default"]),
                    "models": list(cls.requires),
                }
            )
        return rows


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = (time.perf_counter() - start) * 1000.0
