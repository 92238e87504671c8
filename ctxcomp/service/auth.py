"""Bearer-token authentication as a grpc.aio server interceptor.

Every RPC but the health checks needs `authorization: Bearer <token>` (the scheme in any
case, RFC 7235), a token of the server's tenants (ctxcomp.service.tenants); a missing or
wrong token ends the call with UNAUTHENTICATED before any work, its body not even parsed.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Sequence

import grpc

from ctxcomp.service.tenants import Tenants

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def authorization_values(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[str]:
    return [str(value) for key, value in metadata or () if key == "authorization"]


def tenant_of(tenants: Tenants, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The tenant the call's one authorization header names; None if it names none, or if there
    are several (which one a proxy or a server reads differs: accept neither)."""
    presented = authorization_values(metadata)
    return tenants.tenant_of(presented[0]) if len(presented) == 1 else None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_SERVICES) or tenant_of(self.tenants, details.invocation_metadata) is not None:
            return await continuation(details)
        handler = await continuation(details)
        presented = authorization_values(details.invocation_metadata)
        if len(presented) > 1:
            return _refusing(handler, f"{len(presented)} authorization headers; send exactly one")
        return _refusing(handler, "missing bearer token" if not presented else "invalid bearer token")


def _unparsed(data: bytes) -> None:
    """The request of a refused call: its bytes are never parsed."""
    return None


def _refusing(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts with UNAUTHENTICATED."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    serializer = handler.response_serializer if handler else None
    if handler is not None and handler.request_streaming:  # server reflection
        kind = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
        return kind(stream if handler.response_streaming else unary, request_deserializer=_unparsed,
                    response_serializer=serializer)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=_unparsed, response_serializer=serializer)
    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_unparsed, response_serializer=serializer)
