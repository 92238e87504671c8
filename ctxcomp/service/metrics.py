"""Prometheus metrics of one server, exposed on their own HTTP port (`/metrics`).

Each Server owns a registry (several servers in one process, as in tests, do
not collide). The servicer reports every finished RPC (`observe_request`) and
every result (`observe_result`); the batcher reports batch sizes.

On a server with auth, /metrics takes the same bearer tokens as the API: its counters
(KV store hits, say) are about every tenant's traffic, so an anonymous scrape would tell
one caller about the others. Prometheus sends one with `authorization: {credentials_file}`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ctxcomp.methods import CHAIN_SEPARATOR, is_method_name
from ctxcomp.service.tenants import Tenants

if TYPE_CHECKING:
    from ctxcomp.types import CompressResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATIO_BUCKETS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_CHAIN_LABELS = 32  # distinct chains labelled by name; later ones count as "chain"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ctxcomp_requests", "Compress RPCs finished, by compression method, RPC and gRPC status",
            ["method", "rpc", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "ctxcomp_request_seconds", "Compress RPC latency, admission to response", ["method", "rpc"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.input_tokens = Counter(
            "ctxcomp_input_tokens", "Downstream-LLM tokens received", ["method"], registry=self.registry
        )
        self.output_tokens = Counter(
            "ctxcomp_output_tokens", "Downstream-LLM tokens returned", ["method"], registry=self.registry
        )
        self.ratio = Histogram(
            "ctxcomp_compression_ratio", "tokens_before / tokens_after per request", ["method"],
            buckets=RATIO_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "ctxcomp_batch_size", "Requests per model batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.kv_bytes = Counter("ctxcomp_kv_bytes", "KV blob bytes produced", ["codec"], registry=self.registry)
        self.kv_store_lookups = Counter(
            "ctxcomp_kv_store_lookups", "KV store reads before a prefill: hit, miss, or corrupt (deleted and recomputed)",
            ["outcome"], registry=self.registry,
        )
        self._http: Any = None
        self._chain_labels: set[str] = set()

    def method_label(self, method: str) -> str:
        """A registered method's name; a chain's name for the first MAX_CHAIN_LABELS chains seen,
        then "chain"; anything else "invalid". Valid chains alone number ~10^5: a client must
        not grow /metrics at will."""
        if not is_method_name(method):
            return "invalid"
        if CHAIN_SEPARATOR not in method or method in self._chain_labels:
            return method
        if len(self._chain_labels) < MAX_CHAIN_LABELS:
            self._chain_labels.add(method)
            return method
        return "chain"

    def observe_request(self, method: str, rpc: str, code: str, seconds: float) -> None:
        """method: what the client asked for (see method_label)."""
        label = self.method_label(method)
        self.requests.labels(label, rpc, code).inc()
        self.latency.labels(label, rpc).observe(seconds)

    def observe_result(self, result: CompressResult) -> None:
        """result: ctxcomp.types.CompressResult."""
        label = self.method_label(result.method)
        self.input_tokens.labels(label).inc(result.tokens_before)
        self.output_tokens.labels(label).inc(result.tokens_after)
        if result.tokens_after:
            self.ratio.labels(label).observe(result.tokens_before / result.tokens_after)
        if result.kv is not None:
            self.kv_bytes.labels(result.kv.codec).inc(result.kv.size)
            if result.kv.store_lookup:
                self.kv_store_lookups.labels(result.kv.store_lookup).inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def serve(self, host: str, port: int, tenants: Tenants | None = None) -> int:
        """Start the /metrics HTTP endpoint (with `tenants`, for their bearer tokens only);
        returns the bound port (0 picks a free one)."""
        app = make_wsgi_app(self.registry)
        if tenants is not None:
            app = _authenticated(app, tenants)
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="ctxcomp-metrics", daemon=True).start()
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _authenticated(app: Callable, tenants: Tenants) -> Callable:
    def checked(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if tenants.tenant_of(environ.get("HTTP_AUTHORIZATION", "")) is None:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a bearer token of this server is required\n"]
        return app(environ, start_response)

    return checked


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass
