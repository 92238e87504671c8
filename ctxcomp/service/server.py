"""The grpc.aio server: health, reflection, message limits, graceful shutdown, and the
HTTP/JSON gateway beside it (ctxcomp.service.http_gateway)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ctxcomp.pipeline import Compressor
from ctxcomp.service.microbatcher import BatcherConfig, MicroBatcher, release_free_heap
from ctxcomp.service.metrics import Metrics
from ctxcomp.service.auth import BearerTokenInterceptor
from ctxcomp.service.http_gateway import HttpFront
from ctxcomp.service.tenants import Tenants
from ctxcomp.service.servicer import CompressorServicer, add_to_server
from ctxcomp.v1 import ctxcomp_pb2 as pb

log = logging.getLogger("ctxcomp.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Compressor"].full_name


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    workers: int = 1  # threads running model work; torch uses intra-op threads inside each
    grace_s: float = 10.0  # in-flight requests get this long to finish on shutdown
    warm_methods: tuple[str, ...] = field(default=())  # models loaded before SERVING; () = default method
    batching: BatcherConfig = field(default_factory=BatcherConfig)
    auth_token: str = ""  # non-empty: every RPC but health needs "authorization: Bearer <token>" (tenant "default")
    tenants: Tenants | None = None  # several tokens, each a tenant's (instead of auth_token)
    tls_cert_file: str = ""  # PEM certificate chain; with tls_key_file, serve TLS only
    tls_key_file: str = ""
    kv_chunk_bytes: int = 1 << 20  # KV blob bytes per CompressStream message
    metrics_port: int | None = None  # Prometheus /metrics on this port (0 = a free one); None = off
    metrics_host: str = "127.0.0.1"
    http_port: int | None = None  # HTTP/JSON on this port (0 = a free one), transcoded to gRPC; None = off
    http_host: str = ""  # "" = host
    playground: bool = False  # with http_port: the playground page at / (an open door: off by default)
    # Extra grpc.aio server interceptors, run before ours: where OpenTelemetry attaches
    # (opentelemetry-instrumentation-grpc's aio_server_interceptor()).
    interceptors: tuple[Any, ...] = ()


class Server:
    """One running grpc.aio server around a Compressor."""

    def __init__(self, compressor: Compressor, config: ServerConfig) -> None:
        self.compressor = compressor
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ctxcomp-model")
        limit = compressor.limits.max_message_bytes
        interceptors = list(config.interceptors)
        self.tenants = config.tenants or (Tenants.single(config.auth_token) if config.auth_token else None)
        if self.tenants is not None:
            interceptors.append(BearerTokenInterceptor(self.tenants))
        self.grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self.health = health.aio.HealthServicer()
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.batcher = MicroBatcher(compressor, self.executor, config.batching, on_batch=self.metrics.observe_batch)
        add_to_server(CompressorServicer(compressor, self.batcher, config.kv_chunk_bytes, self.metrics, self.tenants), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc,
        )
        address = f"{config.host}:{config.port}"
        if config.tls_cert_file or config.tls_key_file:
            credentials = grpc.ssl_server_credentials(
                [(Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes())]
            )
            self.port = self.grpc.add_secure_port(address, credentials)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {config.host}:{config.port}")
        self.serving = False
        self.http: HttpFront | None = None
        self.http_port: int | None = None
        if config.http_port is not None:
            # The gateway's own way in: a Unix socket in a private folder, plain (it never leaves the host).
            self._socket_dir = tempfile.TemporaryDirectory(prefix="ctxcomp-grpc-")
            socket = f"unix:{self._socket_dir.name}/grpc.sock"
            if self.grpc.add_insecure_port(socket) == 0:
                raise OSError(f"could not bind {socket}")
            ssl_context = None
            if config.tls_cert_file:
                ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ssl_context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
            self.http = HttpFront(socket, config.http_host or config.host, config.http_port, lambda: self.serving, limit,
                                  config.playground, ssl_context, config.grace_s)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Listen at once (health NOT_SERVING), load models, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.batcher.start()
        await self.grpc.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port, self.tenants)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        if self.http is not None:
            self.http_port = await self.http.start()
            log.info("HTTP/JSON on %s:%d%s", self.http.host, self.http_port, ", playground at /" if self.config.playground else "")
        log.info("listening on %s:%d; loading models", self.config.host, self.port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.compressor.warm_up, list(self.config.warm_methods) or None)
        # Warm-up frees far more heap than a request: hand it back now, or the first request's
        # batch pays for it (9 ms against 2 ms after every later batch; bench/startup.py).
        await loop.run_in_executor(self.executor, release_free_heap)
        # The loaded models are ~0.5M objects that live as long as the server: out of the cyclic
        # collector's sight, a full collection takes ~0 ms instead of ~300 ms, a pause that
        # otherwise lands on whichever request is running (bench/load.py, fairness).
        gc.freeze()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        log.info("serving")

    async def stop(self) -> None:
        """NOT_SERVING first, so balancers drain us; refuse new calls and let in-flight ones
        finish for grace_s; the ones still waiting then get UNAVAILABLE from us (grpc's own
        cancellation at the end of its grace would log a CancelledError traceback for each)."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.serving = False
        http_stopping = asyncio.ensure_future(self.http.stop()) if self.http is not None else None
        stopping = asyncio.ensure_future(self.grpc.stop(self.config.grace_s + 5.0))
        cut = await self.batcher.drain(self.config.grace_s)
        if cut:
            log.warning("grace period over: %d requests answered UNAVAILABLE", cut)
        await stopping
        if http_stopping is not None:
            await http_stopping
            self._socket_dir.cleanup()
        await self.batcher.stop()
        self.metrics.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()


async def serve(compressor: Compressor, config: ServerConfig, *, on_ready=None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = Server(compressor, config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    await stopping.wait()
    log.info("signal received; draining for up to %.1f s", config.grace_s)
    await server.stop()


class BackgroundServer:
    """A server on its own event loop in a daemon thread (tests, notebooks, the demo)."""

    def __init__(self, compressor: Compressor, config: ServerConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ctxcomp-server", daemon=True)
        self._thread.start()
        self.server: Server = self._call(self._make(compressor, config))
        self._call(self.server.start())

    async def _make(self, compressor: Compressor, config: ServerConfig) -> Server:
        return Server(compressor, config)  # grpc.aio objects must be created on their loop

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def address(self) -> str:
        return f"{self.server.config.host}:{self.server.port}"

    def stop(self) -> None:
        self._call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
