"""The request path: validate -> count -> compress (method) -> join.

`Compressor` is the one object a server, CLI or library user holds: it owns the
loaded models (ModelHub) and one instance of each method used so far.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ctxcomp import methods
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
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
        with _timed(timings, "compress"):
            for name in dict.fromkeys(plan[0] for plan in plans):
                members = [i for i, plan in enumerate(plans) if plan[0] == name]
                method = self.method(name)
                items = [(requests[i], plans[i][2], tokens_before[i]) for i in members]
                if hasattr(method, "compress_many"):
                    results = method.compress_many(items)
                else:
                    results = [method.compress(*item) for item in items]
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
                        kv_blobs[i] = compute_kv(self.hub.llm(), contexts[i], plan[3], self.kv_store)
        return [
            CompressResult(
                method=plan[0],
                documents=out.documents,
                context=context,
                tokens_before=sum(d.tokens_before for d in out.documents),
                tokens_after=sum(d.tokens_after for d in out.documents),
                timings_ms=dict(timings),
                note=out.note,
                kv=kv,
            )
            for plan, out, context, kv in zip(plans, outputs, contexts, kv_blobs)
        ]

    def plan(self, request: CompressRequest) -> tuple[str, Any, Any, str]:
        """Validate a request; resolve its method, effective config and KV codec."""
        validate(request, self.limits)
        name = request.method or self.default_method
        method = self.method(name)
        config = methods.apply_options(method.presets["default"], request.options)
        codec = ""
        if request.return_kv:
            from ctxcomp.kv.stage import check_kv_request

            llm = self.hub.llm()
            codec = check_kv_request(request.kv_codec, request.kv_model, llm.fingerprint, llm.path.name)
        return name, method, config, codec

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
