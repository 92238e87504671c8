"""The real gRPC server on a free loopback port, through the typed client."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ctxcomp.types import Document
from ctxcomp.v1 import ctxcomp_pb2 as pb

DOCS = [
    Document("a", "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", {"url": "https://x/a"}),
    Document("b", "Bananas are rich in potassium and are grown in tropical regions.", {"url": "https://x/b"}),
]


def test_health_is_serving(client) -> None:
    assert client.health() == "SERVING"
    assert client.health("ctxcomp.v1.Compressor") == "SERVING"


def test_reflection_lists_the_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"ctxcomp.v1.Compressor", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_compress_through_the_client(client) -> None:
    result = client.compress("When was the Eiffel Tower completed?", DOCS, rate=0.5)
    assert result.method == "llmlingua2"
    assert [d.id for d in result.documents] == ["a", "b"]
    assert [d.metadata for d in result.documents] == [d.metadata for d in DOCS]
    assert 0 < result.tokens_after <= result.tokens_before // 2
    assert isinstance(result.tokens_after, int) and isinstance(result.ratio, float)
    assert result.context == "\n\n".join(d.text for d in result.documents if d.text)
    assert set(result.timings_ms) >= {"validate", "compress"}


def test_stream_returns_the_same_response_first(client) -> None:
    request = pb.CompressRequest(query="q", documents=[pb.Document(id="a", text=DOCS[0].text)], rate=0.5)
    chunks = list(client.stub.CompressStream(request, timeout=60))
    assert chunks[0].WhichOneof("chunk") == "response"
    assert chunks[0].response.documents[0].id == "a"


def test_list_methods_reports_options_models_and_limits(client) -> None:
    reply = client.list_methods()
    names = {m.name for m in reply.methods}
    assert "llmlingua2" in names and reply.default_method == "llmlingua2"
    lingua = next(m for m in reply.methods if m.name == "llmlingua2")
    assert {"rate", "force_tokens"} <= {o.name for o in lingua.options}
    assert {m.role for m in reply.models if m.loaded} >= {"token_classifier", "downstream_llm"}
    assert reply.limits.max_documents > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"documents": []}, "documents"),
        ({"rate": 0.0}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"target_tokens": -3}, "target_tokens"),
        ({"method": "nope"}, "method"),
        ({"options": {"bogus": 1}}, "options.bogus"),
        ({"documents": [Document("x", "one"), Document("x", "two")]}, "documents[1].id"),
        ({"documents": [Document("", "no id")]}, "documents[0].id"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(client, kwargs: dict, field: str) -> None:
    args = {"documents": DOCS, **kwargs}
    documents = args.pop("documents")
    with pytest.raises(grpc.RpcError) as caught:
        client.compress("q", documents, **args)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")


def test_kv_request_is_refused_clearly_until_kv_lands(client) -> None:
    request = pb.CompressRequest(query="q", documents=[pb.Document(id="a", text="text")], return_kv=True)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Compress(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "return_kv" in caught.value.details()
