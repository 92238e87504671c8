"""HTTP/JSON beside gRPC on real servers: the same results, the same errors naming the field,
the same auth, and the OpenAPI document generated from the proto."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from ctxcomp.v1 import ctxcomp_pb2 as pb
from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc

SAMPLE = json.loads((Path(__file__).parents[2] / "ctxcomp" / "samples" / "rag_request.json").read_text())


@pytest.fixture(scope="module")
def http_server(compressor):
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    with BackgroundServer(compressor, ServerConfig(port=0, http_port=0, playground=True)) as running:
        yield running


def http(server, path: str, body: object | None = None, token: str = "", raw: bytes | None = None) -> tuple[int, dict]:
    """One call with the standard library's client (what any language's plain HTTP client does)."""
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{server.server.http_port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def grpc_compress(server, message: pb.CompressRequest, token: str = "") -> pb.CompressResponse:
    with grpc.insecure_channel(server.address) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return pb_grpc.CompressorStub(channel).Compress(message, metadata=metadata, timeout=120)


def comparable(response: pb.CompressResponse) -> pb.CompressResponse:
    response.ClearField("timings_ms")  # wall times differ from call to call
    return response


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_compresses_the_sample_and_the_result_equals_grpcs(http_server) -> None:
    request = {**SAMPLE, "rate": 0.33}
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", json.dumps(request),
         f"http://127.0.0.1:{http_server.server.http_port}/v1/compress"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    body = json.loads(out.stdout)
    assert body["method"] == "cascade" and "top-heavy" in body["context"]
    over_http = json_format.ParseDict(body, pb.CompressResponse())
    over_grpc = grpc_compress(http_server, json_format.ParseDict(request, pb.CompressRequest()))
    assert comparable(over_http) == comparable(over_grpc)


@pytest.mark.parametrize(
    "change, field",
    [({"documents": []}, "documents"), ({"rate": 1.5}, "rate"), ({"method": "casacde"}, "method"),
     ({"options": {"bogus": 1}}, "options.bogus"), ({"target_tokens": "-3"}, "target_tokens")],
)
def test_a_bad_request_is_a_400_naming_the_field_as_grpc_does(http_server, change: dict, field: str) -> None:
    request = {**SAMPLE, **change}
    status, body = http(http_server, "/v1/compress", request)
    with pytest.raises(grpc.RpcError) as over_grpc:
        grpc_compress(http_server, json_format.ParseDict(request, pb.CompressRequest()))
    assert over_grpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert status == 400
    assert body["error"] == {"code": 400, "status": "INVALID_ARGUMENT", "field": field, "message": over_grpc.value.details()}


@pytest.mark.parametrize("body, field", [(b'{"query": "q", "rate": "abc"}', "rate"), (b'{"qurey": "q"}', "qurey"),
                                         (b'{"documents": [{"id": "a", "txet": "b"}]}', "documents[0].txet"),
                                         (b"not json", "body")])
def test_json_the_proto_cannot_read_is_a_400_with_a_field(http_server, body: bytes, field: str) -> None:
    status, answer = http(http_server, "/v1/compress", raw=body)
    assert status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert answer["error"]["field"] == field, answer


def test_routes_the_proto_has_and_json_errors_for_the_rest(http_server) -> None:
    status, methods = http(http_server, "/v1/methods")
    assert status == 200 and methods["default_method"] == "cascade"
    assert {m["name"] for m in methods["methods"]} >= {"cascade", "llmlingua2"}
    assert http(http_server, "/healthz") == (200, {"status": "SERVING"})
    status, missing = http(http_server, "/v2/nothing")
    assert status == 404 and missing["error"]["status"] == "NOT_FOUND"


def test_the_openapi_document_validates_is_generated_from_the_proto_and_committed(http_server) -> None:
    from ctxcomp.service.openapi import document

    from openapi_spec_validator import validate

    committed = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    validate(committed)  # OpenAPI 3.1, raises on any schema error
    assert committed == document(), "docs/openapi.json is stale: python -m ctxcomp.service.openapi > docs/openapi.json"
    assert http(http_server, "/openapi.json") == (200, document())
    request_fields = document()["components"]["schemas"]["CompressRequest"]["properties"]
    assert set(request_fields) == {f.name for f in pb.CompressRequest.DESCRIPTOR.fields}


def test_the_same_token_guards_both_doors_and_the_playground_is_off_unless_asked(compressor) -> None:
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    with BackgroundServer(compressor, ServerConfig(port=0, http_port=0, auth_token="tok-1")) as guarded:
        status, body = http(guarded, "/v1/compress", SAMPLE)
        assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
        assert http(guarded, "/v1/compress", SAMPLE, token="wrong")[0] == 401
        status, body = http(guarded, "/v1/compress", SAMPLE, token="tok-1")
        assert status == 200 and body["tokens_after"]
        assert http(guarded, "/healthz")[0] == 200  # probes need no token, as gRPC health
        status, body = http(guarded, "/")
        assert status == 404 and "--playground" in body["error"]["message"]


def test_a_body_over_the_message_limit_is_refused_before_it_is_read(hub) -> None:
    from ctxcomp.pipeline import Compressor, Limits
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    small = Compressor(hub, Limits(max_message_bytes=20_000))
    with BackgroundServer(small, ServerConfig(port=0, http_port=0)) as running:
        request = {"query": "q", "documents": [{"id": "a", "text": "word " * 10_000}]}
        status, body = http(running, "/v1/compress", request)
        assert status == 413 and body["error"]["status"] == "RESOURCE_EXHAUSTED" and body["error"]["field"] == "body"
        status, body = http(running, "/v1/compress", {"query": "q", "documents": [{"id": "a", "text": "word " * 5_000}]})
        assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"  # gRPC's own limit, same status
