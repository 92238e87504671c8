"""Typed Python clients for the ctxcomp service (blocking and asyncio).

A status the server answers with comes back as the exception the in-process API raises for
the same problem (InvalidRequest with its field, Overloaded, Unavailable, NotAvailable, ...),
carrying the server's message; it is a grpc.RpcError too, with the status's code() and
details(), for callers that handle gRPC errors as such.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctxcomp import wire
from ctxcomp.errors import (
    CtxcompError, DeadlineExceeded, InvalidRequest, NotAvailable, Overloaded, Unauthenticated, Unavailable, split_field,
)
from ctxcomp.types import CompressRequest, CompressResult, Document, Message, field_default, request_fields
from ctxcomp.v1 import ctxcomp_pb2 as pb
from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import torch

    from ctxcomp.models.registry import LoadedLLM
    from ctxcomp.soft import SoftTokens

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def as_documents(documents: Sequence[Document | str]) -> tuple[Document, ...]:
    """Documents as given; plain strings get their position as id."""
    return tuple(d if isinstance(d, Document) else Document(str(i), d) for i, d in enumerate(documents))


def build_request(query: str, documents: Sequence[Document | str], **fields: Any) -> pb.CompressRequest:
    """A CompressRequest message. The keywords are CompressRequest's fields, each with the help
    its declaration gives (listed below, and in `inspect.signature(build_request)`).
    `documents` may be plain strings (their position is their id), `messages` (role, content)
    pairs. return_kv on a server with a KV store keeps the blob there and result.kv_keys names
    it (compress_with_kv streams the bytes instead)."""
    unknown = sorted(set(fields) - set(_KEYWORDS))
    if unknown:
        raise TypeError(f"build_request() got unexpected keyword arguments {unknown}; it takes {', '.join(_KEYWORDS)}")
    fields.update(
        documents=as_documents(documents), options=dict(fields.get("options") or {}),
        messages=tuple(m if isinstance(m, Message) else Message(*m) for m in fields.get("messages", ())),
    )
    return wire.request_to_proto(CompressRequest(query=query, **fields))


def _keywords() -> dict[str, inspect.Parameter]:
    """build_request's keywords: every field a client sends, with its declared default."""
    out = {}
    for spec_field, spec in request_fields():
        if spec.on_wire and spec_field.name not in ("query", "documents"):
            out[spec_field.name] = inspect.Parameter(
                spec_field.name, inspect.Parameter.KEYWORD_ONLY, default=field_default(spec_field),
                annotation=spec_field.type,
            )
    return out


_KEYWORDS = _keywords()
build_request.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("query", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str"),
    inspect.Parameter("documents", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Sequence[Document | str]"),
    *_KEYWORDS.values(),
], return_annotation="pb.CompressRequest")
build_request.__doc__ += "\n\n" + "\n".join(  # type: ignore[operator]
    f"    {spec_field.name}: {spec.help}" for spec_field, spec in request_fields() if spec_field.name in _KEYWORDS
)


def build_inputs_embeds(llm: LoadedLLM, prompt: str, soft: SoftTokens, placeholder: str = "<xRAG>") -> torch.Tensor:
    """[1, T, H] inputs_embeds for `llm` (ctxcomp.models.LoadedLLM): the prompt with each
    placeholder replaced by the next of result.soft's vectors (xrag: one per document;
    comi: one per slot). Refuses vectors made for another model or a miscounted prompt."""
    from ctxcomp import soft as soft_tokens

    return soft_tokens.inputs_embeds(llm, prompt, soft, placeholder)


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _open_channel(module: ModuleType, target: str, root_certificates: bytes | None, max_message_bytes: int) -> Any:
    """grpc or grpc.aio channel: TLS when root certificates are given, else plaintext."""
    options = _channel_options(max_message_bytes)
    if root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return module.secure_channel(target, credentials, options=options)
    return module.insecure_channel(target, options=options)


# The server's one mapping (ctxcomp.service.errors), read backwards; other codes (INTERNAL,
# FAILED_PRECONDITION, ...) come back as CtxcompError.
ERROR_BY_STATUS: dict[grpc.StatusCode, type[CtxcompError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: NotAvailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


class RemoteError(grpc.RpcError):
    """What a client raises for a server's status, mixed into the domain error class; `str()`
    and the domain attributes (an InvalidRequest's `field` and `message`) read as in-process."""

    status: grpc.StatusCode
    status_details: str

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.status_details


@functools.cache
def _remote_class(base: type[CtxcompError]) -> type:
    return type(f"Remote{base.__name__}", (base, RemoteError), {"__module__": __name__})


def remote_error(error: grpc.RpcError) -> CtxcompError:
    """The domain error for a status the server answered with (see ERROR_BY_STATUS)."""
    status, message = error.code(), error.details() or ""
    base = ERROR_BY_STATUS.get(status, CtxcompError)
    cls = _remote_class(base)
    if base is InvalidRequest:
        raised = cls(*split_field(message))
    else:
        raised = cls(message or status.name)
    raised.status, raised.status_details = status, message
    return raised


@contextmanager
def domain_errors() -> Iterator[None]:
    """Calls inside raise the domain error of a server's status instead of grpc's own."""
    try:
        yield
    except grpc.RpcError as error:
        if isinstance(error, RemoteError):
            raise
        raise remote_error(error) from None


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def reassemble(chunks: Iterable[pb.CompressStreamChunk]) -> tuple[CompressResult, bytes | None]:
    """The response and the blob from a CompressStream, checking order, size and checksum."""
    from ctxcomp.kv import blob

    chunks = iter(chunks)
    first = next(chunks)
    if first.WhichOneof("chunk") != "response":
        raise ValueError("CompressStream did not start with the response")
    response = first.response
    parts, received = [], 0
    for chunk in chunks:
        if chunk.kv.offset != received:
            raise ValueError(f"KV chunk at offset {chunk.kv.offset}, expected {received}")
        parts.append(chunk.kv.data)
        received += len(chunk.kv.data)
    if received != response.kv_bytes:
        raise ValueError(f"KV blob: received {received} bytes, announced {response.kv_bytes}")
    data = b"".join(parts) if received else None
    if data is not None:
        blob.inspect(data)  # raises BlobRefused when corrupt
    return wire.result_from_proto(response), data


class _Connection:
    """Channel, stub, timeout and auth metadata shared by both clients.

    token: sent as "authorization: Bearer <token>"; root_certificates: PEM bytes
    that switch the channel to TLS.
    """

    _grpc: ModuleType = grpc

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 60.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.channel = _open_channel(self._grpc, target, root_certificates, max_message_bytes)
        self.stub = pb_grpc.CompressorStub(self.channel)
        self.timeout = timeout
        self.metadata = _auth_metadata(token)


class CtxcompClient(_Connection):
    """Blocking client. A server's error status raises its domain error (see the module doc)."""

    def __init__(self, target: str, **kwargs: Any):
        super().__init__(target, **kwargs)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def compress(self, query: str, documents: Sequence[Document | str], **kwargs: Any) -> CompressResult:
        """See build_request for the keyword arguments."""
        request = build_request(query, documents, **kwargs)
        with domain_errors():
            response = self.stub.Compress(request, timeout=self.timeout, metadata=self.metadata)
        return wire.result_from_proto(response)

    def compress_with_kv(
        self, query: str, documents: Sequence[Document | str], *, kv_codec: str = "", **kwargs: Any
    ) -> tuple[CompressResult, bytes | None]:
        """Compress and receive the downstream LLM's KV blob for the context (CompressStream).
        kv_codec: empty for the server's default (fp16; LMCache chunks on an lmcache+fs:// store).

        Returns the result and the reassembled blob, verified (format, checksum);
        None when the server keeps blobs in its store (result.kv keys in the
        response then). Turn the blob into a cache with ctxcomp.kv.handoff.cache_from_blob.
        """
        request = build_request(query, documents, **kwargs)
        request.return_kv = True
        request.kv_codec = kv_codec
        with domain_errors():
            stream = self.stub.CompressStream(request, timeout=self.timeout, metadata=self.metadata)
            return reassemble(stream)

    def list_methods(self) -> pb.ListMethodsResponse:
        with domain_errors():
            return self.stub.ListMethods(pb.ListMethodsRequest(), timeout=self.timeout, metadata=self.metadata)

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... for the whole server or one service name."""
        with domain_errors():
            reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CtxcompClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCtxcompClient(_Connection):
    """asyncio client on grpc.aio; create and use it inside one running event loop."""

    _grpc = grpc.aio

    async def compress(self, query: str, documents: Sequence[Document | str], **kwargs: Any) -> CompressResult:
        request = build_request(query, documents, **kwargs)
        with domain_errors():
            response = await self.stub.Compress(request, timeout=self.timeout, metadata=self.metadata)
        return wire.result_from_proto(response)

    async def close(self) -> None:
        await self.channel.close()
