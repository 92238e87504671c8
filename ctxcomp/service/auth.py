"""Bearer-token authentication as a grpc.aio server interceptor.

Every RPC but the health checks needs `authorization: Bearer <token>`;
a missing or wrong token ends the call with UNAUTHENTICATED before any work.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty bearer token would accept anyone; pass a non-empty token")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        presented = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if len(presented) == 1 and hmac.compare_digest(str(presented[0]).encode(), self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if len(presented) > 1:  # which one a proxy or a server reads differs: accept neither
            return _refusing(handler, f"{len(presented)} authorization headers; send exactly one")
        return _refusing(handler, "missing bearer token" if not presented else "invalid bearer token")


def _refusing(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts with UNAUTHENTICATED."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer if handler else None,
        response_serializer=handler.response_serializer if handler else None,
    )
