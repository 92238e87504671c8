"""HTTP/JSON beside gRPC: each route is transcoded to the server's own gRPC method.

The gateway holds a channel to this process's gRPC server over a private Unix socket, so an
HTTP call goes through exactly what a gRPC call does (wire_guard's parsing, the bearer-token
interceptor, limits, the micro-batcher, the one error mapping) and the JSON is the proto's
canonical JSON mapping (google.protobuf.json_format; field names as in the .proto, 64-bit
integers as strings). Errors come back as an HTTP status with a JSON body:

    {"error": {"code": 400, "status": "INVALID_ARGUMENT", "field": "documents[0].text", "message": "..."}}

Routes:
    POST /v1/compress      CompressRequest -> CompressResponse (KV blobs: with a store, keys only;
                           streamed blobs are gRPC-only, CompressStream)
    GET  /v1/methods       ListMethodsResponse
    GET  /healthz          200 {"status": "SERVING"} once models are loaded, else 503
    GET  /openapi.json     the OpenAPI document (generated from the proto: ctxcomp.service.openapi)
    GET  /                 the playground page, only with `--playground`
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from ctxcomp.errors import split_field
from ctxcomp.v1 import ctxcomp_pb2 as pb
from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc

# gRPC status -> HTTP status, as google.rpc.Code documents it (and grpc-gateway maps it).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# json_format's errors: 'Failed to parse rate field: ... at CompressRequest.rate.' and
# 'Message type "ctxcomp.v1.CompressRequest" has no field named "qurey" at "CompressRequest".'
_AT_PATH = re.compile(r" at ([\w.\[\]]+)\.?$", re.MULTILINE)
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]*)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")

Health = Callable[[], bool]


def error_body(status: grpc.StatusCode, message: str) -> dict:
    """The JSON error for a gRPC status; INVALID_ARGUMENT names its field (our messages read "field: why")."""
    error = {"code": HTTP_STATUS.get(status, 500), "status": status.name, "message": message}
    if status is grpc.StatusCode.INVALID_ARGUMENT:
        error["field"] = split_field(message)[0]
    return {"error": error}


def error_response(status: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response(error_body(status, message), status=HTTP_STATUS.get(status, 500))


def to_json(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def from_json(text: bytes, message: Message) -> Message | web.Response:
    """The body parsed into `message`, or a 400 naming the field json_format could not read."""
    try:
        return json_format.Parse(text, message)
    except json_format.ParseError as err:
        detail = str(err).splitlines()[0]
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"{parse_error_field(detail)}: {detail}")


def parse_error_field(detail: str) -> str:
    """The request field a json_format error is about, as our own errors name fields
    ("rate", "documents[0].qurey"); "body" when the text is not JSON at all."""
    unknown = _UNKNOWN_FIELD.search(detail)
    if unknown:
        within = unknown.group(2).partition(".")[2]  # drop the message type the path starts with
        return f"{within}.{unknown.group(1)}" if within else unknown.group(1)
    at = _AT_PATH.search(detail)
    if at and at.group(1).partition(".")[2]:
        return at.group(1).partition(".")[2]
    return ".".join(_FAILED_FIELD.findall(detail)) or "body"


class Gateway:
    """The aiohttp application; `channel` reaches this server's gRPC port."""

    def __init__(self, channel: grpc.aio.Channel, healthy: Health, max_body_bytes: int, playground: bool) -> None:
        self.healthy = healthy
        self.playground = playground
        self.max_body_bytes = max_body_bytes
        self.stub = pb_grpc.CompressorStub(channel)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self.json_errors])
        self.app.add_routes([
            web.post("/v1/compress", self.post_compress),
            web.get("/v1/methods", self.get_methods),
            web.get("/healthz", self.get_health),
            web.get("/openapi.json", self.get_openapi),
            web.get("/", self.get_playground),
        ])

    @web.middleware
    async def json_errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """aiohttp's own refusals (unknown route, wrong verb, body too large) in the same JSON shape."""
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            status = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
                      413: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(err.status, grpc.StatusCode.INVALID_ARGUMENT)
            error = {"code": err.status, "status": status.name, "message": f"{err.reason}: {request.method} {request.path}"}
            if err.status == 413:
                error |= {"field": "body", "message": f"body: over this server's {self.max_body_bytes} bytes"}
            return web.json_response({"error": error}, status=err.status)

    @staticmethod
    def metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
        """What the gRPC interceptors read: the bearer token, as the client sent it."""
        auth = request.headers.get("Authorization")
        return (("authorization", auth),) if auth else ()

    async def call(self, rpc: grpc.aio.UnaryUnaryMultiCallable, message: Message, request: web.Request) -> web.Response:
        try:
            response = await rpc(message, metadata=self.metadata(request))
        except grpc.aio.AioRpcError as err:
            return error_response(err.code(), err.details() or err.code().name)
        return web.json_response(to_json(response))

    async def post_compress(self, request: web.Request) -> web.Response:
        parsed = from_json(await request.read(), pb.CompressRequest())
        if isinstance(parsed, web.Response):
            return parsed
        return await self.call(self.stub.Compress, parsed, request)

    async def get_methods(self, request: web.Request) -> web.Response:
        return await self.call(self.stub.ListMethods, pb.ListMethodsRequest(), request)

    async def get_health(self, request: web.Request) -> web.Response:
        serving = self.healthy()
        return web.json_response({"status": "SERVING" if serving else "NOT_SERVING"}, status=200 if serving else 503)

    async def get_openapi(self, request: web.Request) -> web.Response:
        from ctxcomp.service.openapi import document

        return web.Response(text=json.dumps(document(), indent=1), content_type="application/json")

    async def get_playground(self, request: web.Request) -> web.Response:
        if not self.playground:
            raise web.HTTPNotFound(reason="the playground is off (ctxcomp serve --playground)")
        return web.Response(text=playground_page(), content_type="text/html")


def playground_page() -> str:
    """The playground's HTML with the embedded sample request in it (its "Load the sample")."""
    sample = resources.files("ctxcomp.samples").joinpath("rag_request.json").read_text()
    page = resources.files("ctxcomp.service").joinpath("playground.html").read_text()
    return page.replace("__SAMPLE__", json.dumps(json.loads(sample)).replace("</", "<\\/"))


class HttpFront:
    """The gateway's listening side: an aiohttp site on (host, port), its channel to `grpc_target`."""

    def __init__(
        self, grpc_target: str, host: str, port: int, healthy: Health, max_message_bytes: int, playground: bool,
        ssl_context: object | None = None, grace_s: float = 10.0,
    ) -> None:
        self.grpc_target, self.host, self.requested_port = grpc_target, host, port
        self.healthy, self.max_message_bytes, self.playground = healthy, max_message_bytes, playground
        self.ssl_context, self.grace_s = ssl_context, grace_s
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> int:
        limit = self.max_message_bytes
        self._channel = grpc.aio.insecure_channel(
            self.grpc_target, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        # JSON spells a message out at up to ~2x its proto size; the gRPC limit then applies to the proto.
        gateway = Gateway(self._channel, self.healthy, 2 * limit, self.playground)
        self._runner = web.AppRunner(gateway.app, access_log=None, shutdown_timeout=self.grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close()
