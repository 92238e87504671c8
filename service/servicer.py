"""Compressor service: proto in, pipeline call in a worker thread, proto out."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import grpc

from ctxcomp import wire
from ctxcomp.models import describe_roles
from ctxcomp.pipeline import Compressor
from ctxcomp.service.errors import status_for
from ctxcomp.v1 import ctxcomp_pb2 as pb
from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc


class CompressorServicer(pb_grpc.CompressorServicer):
    def __init__(self, compressor: Compressor, executor: ThreadPoolExecutor) -> None:
        self.compressor = compressor
        self.executor = executor

    async def _run(self, request: pb.CompressRequest, context: grpc.aio.ServicerContext) -> pb.CompressResponse:
        loop = asyncio.get_running_loop()
        try:
            domain_request = wire.request_from_proto(request)
            result = await loop.run_in_executor(self.executor, self.compressor.compress, domain_request)
        except Exception as error:  # every error leaves through the one mapping
            code, message = status_for(error)
            await context.abort(code, message)
        return wire.result_to_proto(result, tokenizer=self.compressor.hub.tokenizer_name)

    async def Compress(self, request: pb.CompressRequest, context: grpc.aio.ServicerContext) -> pb.CompressResponse:
        return await self._run(request, context)

    async def CompressStream(
        self, request: pb.CompressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompressStreamChunk]:
        response = await self._run(request, context)
        yield pb.CompressStreamChunk(response=response)

    async def ListMethods(self, request: pb.ListMethodsRequest, context: grpc.aio.ServicerContext) -> pb.ListMethodsResponse:
        limits = self.compressor.limits
        loaded = self.compressor.hub.loaded_roles()
        return pb.ListMethodsResponse(
            methods=[
                pb.MethodInfo(
                    name=m["name"],
                    description=m["description"],
                    options=[pb.MethodOption(**o) for o in m["options"]],
                    models=m["models"],
                    available=True,
                )
                for m in self.compressor.describe_methods()
            ],
            models=[
                pb.ModelInfo(role=r["role"], source=f"{r['kind']}: {r['location']}", loaded=r["role"] in loaded)
                for r in describe_roles()
            ],
            limits=pb.Limits(
                max_query_chars=limits.max_query_chars,
                max_documents=limits.max_documents,
                max_document_chars=limits.max_document_chars,
                max_total_chars=limits.max_total_chars,
                max_message_bytes=limits.max_message_bytes,
            ),
            default_method=self.compressor.default_method,
        )
