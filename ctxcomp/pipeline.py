"""The request path: validate -> count -> compress (method) -> join.

`Compressor` is the one object a server, CLI or library user holds: it owns the
loaded models (ModelHub) and one instance of each method used so far.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ctxcomp import methods
from ctxcomp.errors import InvalidRequest, NotAvailable
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
    ) -> None:
        self.hub = hub or ModelHub()
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
        timings: dict[str, float] = {}
        with _timed(timings, "validate"):
            validate(request, self.limits)
            name = request.method or self.default_method
            method = self.method(name)
            config = methods.apply_options(method.presets["default"], request.options)
            if request.return_kv:
                raise NotAvailable("return_kv: KV blobs are not served yet by this server")
        with _timed(timings, "count"):
            tokens_before = self.hub.count_tokens([d.text for d in request.documents])
        with _timed(timings, "compress"):
            output = method.compress(request, config, tokens_before)
        with _timed(timings, "join"):
            context = CONTEXT_SEPARATOR.join(d.text for d in output.documents if d.text)
        return CompressResult(
            method=name,
            documents=output.documents,
            context=context,
            tokens_before=sum(d.tokens_before for d in output.documents),
            tokens_after=sum(d.tokens_after for d in output.documents),
            timings_ms=timings,
            note=output.note,
        )

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
