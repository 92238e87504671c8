"""Compressor service: proto in, pipeline call in a worker thread, proto out."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator

import grpc

from ctxcomp import wire
from ctxcomp.errors import InvalidRequest
from ctxcomp.models import describe_roles
from ctxcomp.pipeline import Compressor
from ctxcomp.service.microbatcher import MicroBatcher
from ctxcomp.service.metrics import Metrics
from ctxcomp.service.wire_guard import parse_compress_request, parse_list_methods_request
from ctxcomp.service.auth import tenant_of
from ctxcomp.service.tenants import Tenants
from ctxcomp.types import CompressRequest, CompressResult
from ctxcomp.service.errors import status_for
from ctxcomp.v1 import ctxcomp_pb2 as pb
from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc


class CompressorServicer(pb_grpc.CompressorServicer):
    def __init__(
        self, compressor: Compressor, batcher: MicroBatcher, kv_chunk_bytes: int = 1 << 20, metrics: Metrics | None = None,
        tenants: Tenants | None = None,
    ) -> None:
        self.compressor = compressor
        self.batcher = batcher
        self.kv_chunk_bytes = kv_chunk_bytes
        self.metrics = metrics or Metrics()
        self.tenants = tenants  # with auth: whose call it is names the KV namespace

    async def _run(
        self, request: pb.CompressRequest | InvalidRequest, context: grpc.aio.ServicerContext, *, streaming: bool
    ) -> CompressResult:
        started = time.perf_counter()
        rpc = "CompressStream" if streaming else "Compress"
        method = "" if isinstance(request, InvalidRequest) else request.method
        method = method or self.compressor.default_method
        try:
            if isinstance(request, InvalidRequest):  # the bytes did not parse (see wire_guard)
                raise request
            if request.return_kv and not streaming and self.compressor.kv_store is None:
                raise InvalidRequest(
                    "return_kv", "this server has no KV store: call CompressStream to receive the blob in chunks"
                )
            remaining = context.time_remaining()
            submitted = self.batcher.submit(self._request(request, context), remaining)
            # Past the client's deadline the result is useless: stop waiting, and the
            # batcher skips the request if its batch has not started.
            result = await (asyncio.wait_for(submitted, remaining) if remaining is not None else submitted)
        except TimeoutError:
            self.metrics.observe_request(method, rpc, "DEADLINE_EXCEEDED", time.perf_counter() - started)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the request was served")
        except asyncio.CancelledError:  # the client cancelled, or grpc ended the call at its deadline
            expired = context.time_remaining() is not None and context.time_remaining() <= 0
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            self.metrics.observe_request(method, rpc, code, time.perf_counter() - started)
            raise
        except Exception as error:  # every error leaves through the one mapping
            code, message = status_for(error)
            self.metrics.observe_request(method, rpc, code.name, time.perf_counter() - started)
            await context.abort(code, message)
        else:
            self.metrics.observe_request(method, rpc, "OK", time.perf_counter() - started)
            self.metrics.observe_result(result)
            return result
        raise AssertionError("unreachable: abort raises")

    def _request(self, message: pb.CompressRequest, context: grpc.aio.ServicerContext) -> CompressRequest:
        """The domain request, with the tenant the interceptor authenticated (never the client's word)."""
        request = wire.request_from_proto(message)
        if self.tenants is None:
            return request
        return dataclasses.replace(request, tenant=tenant_of(self.tenants, context.invocation_metadata()) or "")

    def _response(self, result: CompressResult) -> pb.CompressResponse:
        hub = self.compressor.hub
        return wire.result_to_proto(result, tokenizer=hub.llm_tokenizers[result.llm] if result.llm else hub.tokenizer_name)

    async def Compress(self, request: pb.CompressRequest, context: grpc.aio.ServicerContext) -> pb.CompressResponse:
        return self._response(await self._run(request, context, streaming=False))

    async def CompressStream(
        self, request: pb.CompressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompressStreamChunk]:
        result = await self._run(request, context, streaming=True)
        yield pb.CompressStreamChunk(response=self._response(result))
        data = result.kv.data if result.kv is not None else None
        for offset in range(0, len(data or b""), self.kv_chunk_bytes):
            piece = data[offset : offset + self.kv_chunk_bytes]
            last = offset + len(piece) >= len(data)
            yield pb.CompressStreamChunk(
                kv=pb.KvChunk(blob_id=result.kv.key, offset=offset, data=piece, total_bytes=len(data), last=last)
            )

    async def ListMethods(
        self, request: pb.ListMethodsRequest | InvalidRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMethodsResponse:
        if isinstance(request, InvalidRequest):  # the bytes did not parse (see wire_guard)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request))
        limits = self.compressor.limits
        loaded = self.compressor.hub.loaded_roles()
        precisions = dict(self.compressor.hub.precisions)
        return pb.ListMethodsResponse(
            methods=[
                pb.MethodInfo(
                    name=m["name"],
                    description=m["description"],
                    options=[pb.MethodOption(**o) for o in m["options"]],
                    models=m["models"],
                    available=not m["unavailable"],
                    reasons=m["unavailable"],
                )
                for m in self.compressor.describe_methods()
            ],
            models=[
                pb.ModelInfo(
                    role=r["role"], source=f"{r['kind']}: {r['location']}", loaded=r["role"] in loaded,
                    precision=precisions.get(r["role"], ("", {}))[0], precision_ms=precisions.get(r["role"], ("", {}))[1],
                )
                for r in describe_roles()
            ],
            limits=pb.Limits(
                max_query_chars=limits.max_query_chars,
                max_documents=limits.max_documents,
                max_document_chars=limits.max_document_chars,
                max_total_chars=limits.max_total_chars,
                max_message_bytes=limits.max_message_bytes,
                max_request_tokens=limits.max_request_tokens,
            ),
            default_method=self.compressor.default_method,
        )


def add_to_server(servicer: CompressorServicer, server: grpc.aio.Server) -> None:
    """Like the generated add_CompressorServicer_to_server, but requests are parsed by
    wire_guard, so bad bytes get INVALID_ARGUMENT naming the field."""
    handlers = {
        "Compress": grpc.unary_unary_rpc_method_handler(
            servicer.Compress,
            request_deserializer=parse_compress_request,
            response_serializer=pb.CompressResponse.SerializeToString,
        ),
        "CompressStream": grpc.unary_stream_rpc_method_handler(
            servicer.CompressStream,
            request_deserializer=parse_compress_request,
            response_serializer=pb.CompressStreamChunk.SerializeToString,
        ),
        "ListMethods": grpc.unary_unary_rpc_method_handler(
            servicer.ListMethods,
            request_deserializer=parse_list_methods_request,
            response_serializer=pb.ListMethodsResponse.SerializeToString,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Compressor"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
