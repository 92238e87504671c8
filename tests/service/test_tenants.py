"""Tenants: tokens, a KV namespace each, and /metrics behind the same tokens, on real servers."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from ctxcomp.client import CtxcompClient
from ctxcomp.kv.stage import BlobTarget
from ctxcomp.kv.store import open_store
from ctxcomp.pipeline import Compressor
from ctxcomp.service.server import BackgroundServer, ServerConfig
from ctxcomp.service.tenants import Tenants
from ctxcomp.v1 import ctxcomp_pb2 as pb

QUERY = "Why did the Vasa sink?"
TEXT = ("The Vasa sank in 1628 because it was top-heavy: its upper gun deck carried too many heavy cannons. "
        "A gust of wind heeled it over and water poured in through the open gun ports.")
KV = dict(method="cascade", rate=0.5, return_kv=True, kv_codec="int8")


def test_a_tokens_file_names_tenants_and_the_scheme_is_any_case(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# tenant token\nacme  tok-a\n\nglobex tok-g\n")
    tenants = Tenants.from_file(path)
    assert tenants.tenant_of("Bearer tok-a") == "acme"
    assert tenants.tenant_of("bearer tok-g") == tenants.tenant_of("BEARER  tok-g ") == "globex"
    assert tenants.tenant_of("Basic tok-a") is None and tenants.tenant_of("Bearer tok-x") is None
    assert tenants.tenant_of("Bearer") is None
    for text in ("acme\n", "acme a b\n", "acme same\nglobex same\n"):
        path.write_text(text)
        with pytest.raises(ValueError):
            Tenants.from_file(path)


@pytest.fixture(scope="module")
def tenant_server(hub, tmp_path_factory):
    tenants = Tenants.of([("acme", "tok-a"), ("globex", "tok-g")])
    store = open_store(f"file://{tmp_path_factory.mktemp('kv')}")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TRITON_INTERPRET", raising=False)  # the PyTorch prefill a CPU server takes
        config = ServerConfig(port=0, tenants=tenants, metrics_port=0)
        with BackgroundServer(Compressor(hub, kv_store=BlobTarget(store)), config) as server:
            yield server


def kv_key(server: BackgroundServer, token: str, **extra) -> tuple[str, bool]:
    """The stored blob's key for the same request sent as `token`'s tenant, and whether the
    store already had it."""
    hits = server.server.metrics.registry.get_sample_value
    before = hits("ctxcomp_kv_store_lookups_total", {"outcome": "hit"}) or 0.0
    with CtxcompClient(server.address, token=token, timeout=300) as client:
        result = client.compress(QUERY, [TEXT], **KV, **extra)
    return result.kv_keys[0], (hits("ctxcomp_kv_store_lookups_total", {"outcome": "hit"}) or 0.0) > before


def test_tenants_never_share_stored_kv_and_one_tenant_does(tenant_server) -> None:
    key_a, found = kv_key(tenant_server, "tok-a")
    assert not found
    assert kv_key(tenant_server, "tok-a") == (key_a, True)  # the same tenant's repeat comes from the store
    key_g, found = kv_key(tenant_server, "tok-g")
    assert not found and key_g != key_a  # another tenant computes its own: nothing to time
    salted, found = kv_key(tenant_server, "tok-a", cache_salt="session-2")
    assert not found and salted not in (key_a, key_g)


def test_metrics_take_the_api_tokens(tenant_server) -> None:
    url = f"http://127.0.0.1:{tenant_server.server.metrics_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": "bearer tok-g"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert b"ctxcomp_requests_total" in answer.read()


def test_a_refused_call_is_not_parsed(tenant_server) -> None:
    """Garbage bytes with a wrong token: UNAUTHENTICATED, not a parse error about the body."""
    with grpc.insecure_channel(tenant_server.address) as channel:
        call = channel.unary_unary("/ctxcomp.v1.Compressor/Compress")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xfe not a message", metadata=[("authorization", "Bearer nope")], timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_bearer_scheme_is_case_insensitive_on_the_api(tenant_server) -> None:
    with grpc.insecure_channel(tenant_server.address) as channel:
        call = channel.unary_unary("/ctxcomp.v1.Compressor/ListMethods",
                                   request_serializer=pb.ListMethodsRequest.SerializeToString,
                                   response_deserializer=pb.ListMethodsResponse.FromString)
        for scheme in ("bearer", "BEARER", "Bearer"):
            assert call(pb.ListMethodsRequest(), metadata=[("authorization", f"{scheme} tok-a")], timeout=30).methods
