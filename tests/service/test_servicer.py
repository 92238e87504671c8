"""The real gRPC server on a free loopback port, through the typed client."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ctxcomp.types import CompressRequest, Document
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
    assert result.method == "cascade"  # the default
    assert [d.id for d in result.documents] == ["a", "b"]
    assert result.documents[0].score > result.documents[1].score  # scores are document relevance
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
    assert {"llmlingua2", "cascade"} <= names and reply.default_method == "cascade"
    lingua = next(m for m in reply.methods if m.name == "llmlingua2")
    assert {"rate", "force_tokens"} <= {o.name for o in lingua.options}
    assert all(m.available and not m.reasons for m in reply.methods)  # every model ships offline
    assert {m.role for m in reply.models if m.loaded} >= {"relevance", "downstream_llm"}
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
        ({"documents": [Document("x", "<p>page</p>", format="pdf")]}, "documents[0].format"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(client, kwargs: dict, field: str) -> None:
    args = {"documents": DOCS, **kwargs}
    documents = args.pop("documents")
    with pytest.raises(grpc.RpcError) as caught:
        client.compress("q", documents, **args)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")


def test_kv_blobs_go_to_the_store_and_come_back_as_keys(hub, tmp_path) -> None:
    from ctxcomp.kv import blob
    from ctxcomp.kv.stage import BlobTarget
    from ctxcomp.kv.store import open_store
    from ctxcomp.pipeline import Compressor
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    store = open_store(f"file://{tmp_path}/kv")
    with BackgroundServer(Compressor(hub, kv_store=BlobTarget(store)), ServerConfig(port=0)) as server:
        request = pb.CompressRequest(query="q", documents=[pb.Document(id="a", text=DOCS[0].text)], rate=0.5,
                                     return_kv=True, kv_codec="int4")
        with grpc.insecure_channel(server.address) as channel:
            from ctxcomp.v1 import ctxcomp_pb2_grpc as pb_grpc

            first = pb_grpc.CompressorStub(channel).Compress(request, timeout=120)
            again = pb_grpc.CompressorStub(channel).Compress(request, timeout=120)
        from ctxcomp.client import CtxcompClient

        with CtxcompClient(server.address, timeout=120) as client:  # the typed client sees the keys too
            typed = client.compress("q", [DOCS[0]], rate=0.5, return_kv=True, kv_codec="int4")
    assert len(first.kv_keys) == 1 and first.kv_keys == again.kv_keys and first.kv_bytes == 0
    assert typed.kv_keys == tuple(first.kv_keys)
    meta = blob.inspect(store.get(first.kv_keys[0]))
    assert meta.codec == "int4" and meta.tokens > 0


def test_concurrent_requests_share_batches_and_match_single_results(server, compressor) -> None:
    import asyncio

    from ctxcomp.client import AsyncCtxcompClient

    texts = [f"Document {i}: the Eiffel Tower in Paris was completed in {1880 + i} for the fair." for i in range(12)]

    async def fire() -> list:
        client = AsyncCtxcompClient(server.address, timeout=120)
        try:
            return await asyncio.gather(*(client.compress("q", [t], rate=0.5) for t in texts))
        finally:
            await client.close()

    before = len(server.server.batcher.batch_sizes)
    results = asyncio.run(fire())
    sizes = server.server.batcher.batch_sizes[before:]
    assert sum(sizes) == len(texts) and max(sizes) > 1
    for text, result in zip(texts, results):
        alone = compressor.compress(CompressRequest("q", (Document("0", text),), rate=0.5))
        assert result.context == alone.context


def test_full_queue_is_refused_with_resource_exhausted(compressor) -> None:
    import asyncio

    from ctxcomp.client import AsyncCtxcompClient
    from ctxcomp.errors import Overloaded
    from ctxcomp.service.microbatcher import BatcherConfig
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    config = ServerConfig(port=0, batching=BatcherConfig(max_batch=1, max_queue=1))
    with BackgroundServer(compressor, config) as small:

        async def fire() -> list:
            client = AsyncCtxcompClient(small.address, timeout=120)
            try:
                calls = [client.compress("q", [DOCS[0].text * 20], rate=0.5) for _ in range(16)]
                return await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await client.close()

        outcomes = asyncio.run(fire())
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert all(isinstance(o, Overloaded) for o in refused)  # the in-process exception, raised by the client
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert served and refused
    assert {o.code() for o in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "queued" in refused[0].details()


def test_metrics_endpoint_shows_counters_moving(compressor) -> None:
    import urllib.request

    from ctxcomp.client import CtxcompClient
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    def scrape(port: int) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}

    with BackgroundServer(compressor, ServerConfig(port=0, metrics_port=0)) as running:
        port = running.server.metrics_port
        ok = 'ctxcomp_requests_total{code="OK",method="cascade",rpc="Compress"}'
        before = scrape(port)
        with CtxcompClient(running.address, timeout=60) as client:
            for _ in range(2):
                client.compress("q", ["Super Bowl 50 was played at Levi's Stadium in Santa Clara."], rate=0.5)
            with pytest.raises(grpc.RpcError):
                client.compress("q", ["text"], rate=2.0)
        after = scrape(port)
    assert after[ok] - before.get(ok, 0.0) == 2
    assert after['ctxcomp_requests_total{code="INVALID_ARGUMENT",method="cascade",rpc="Compress"}'] == 1
    assert after['ctxcomp_input_tokens_total{method="cascade"}'] > after['ctxcomp_output_tokens_total{method="cascade"}'] > 0
    assert after['ctxcomp_request_seconds_count{method="cascade",rpc="Compress"}'] == 3
    assert after['ctxcomp_compression_ratio_count{method="cascade"}'] == 2
    assert after["ctxcomp_batch_size_count"] >= 1


def test_extra_interceptors_see_every_call(compressor) -> None:
    """The hook OpenTelemetry's aio_server_interceptor() plugs into."""
    from ctxcomp.client import CtxcompClient
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    seen: list[str] = []

    class Recorder(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, handler_call_details):
            seen.append(handler_call_details.method)
            return await continuation(handler_call_details)

    with BackgroundServer(compressor, ServerConfig(port=0, interceptors=(Recorder(),))) as running:
        with CtxcompClient(running.address, timeout=60) as client:
            client.compress("q", ["A short text about football."], rate=0.5)
    assert "/ctxcomp.v1.Compressor/Compress" in seen


def test_html_pages_travel_with_their_format_and_come_back_pointing_into_the_page(client) -> None:
    page = ("<html><body><nav><a href='/'>Home</a></nav><h1>Paris</h1><p>The Eiffel Tower was completed in 1889 "
            "for the World&#39;s Fair.</p><footer>Contact</footer></body></html>")
    result = client.compress("When was the Eiffel Tower completed?", [Document("p", page, format="html")],
                             rate=0.5, html_output=True)
    doc = result.documents[0]
    assert doc.text.startswith("<") and "1889" in doc.text and "Home" not in doc.text
    assert "1889" in " ".join(page[s.start:s.end] for s in doc.kept_spans)
