"""Bad input, limits, auth, TLS, deadlines and shutdown against real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ctxcomp import methods
from ctxcomp.client import AsyncCtxcompClient, CtxcompClient
from ctxcomp.kv.stage import BlobTarget
from ctxcomp.kv.store import open_store
from ctxcomp.pipeline import Compressor
from ctxcomp.service.server import BackgroundServer, ServerConfig
from ctxcomp.types import Document
from ctxcomp.v1 import ctxcomp_pb2 as pb

TEXT = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris, France."
PAGE = ("<html><head><title>Paris</title><style>p{}</style></head><body><nav class=\"menu\">Home</nav>"
        f"<article><h1>The tower</h1><p>{TEXT}</p><table><tr><td>1889</td><td>opened</td></tr></table></article>"
        "<footer>Contact</footer></body></html>")
LONG = "x" * 9000  # longer than gRPC's 8 KB status metadata, were it echoed whole
DEEP_PAGES = ("<div>" * 1100 + TEXT, "<b>" * 5000 + TEXT + "</b>" * 10, "<p><b><i>" * 800 + TEXT)
FIELD_PATHS = ("query", "documents", "method", "rate", "target_tokens", "options", "target", "request", "return_kv",
               "kv_codec", "kv_model", "order", "messages", "verbatim_turns", "history_mode")


def test_auth_required_when_configured(compressor) -> None:
    with BackgroundServer(compressor, ServerConfig(port=0, auth_token="s3cret")) as server:
        for token, code in [(None, grpc.StatusCode.UNAUTHENTICATED), ("wrong", grpc.StatusCode.UNAUTHENTICATED)]:
            with CtxcompClient(server.address, token=token) as client, pytest.raises(grpc.RpcError) as caught:
                client.compress("q", [TEXT], rate=0.5)
            assert caught.value.code() == code
        with CtxcompClient(server.address, token="s3cret") as client:
            assert client.compress("q", [TEXT], rate=0.5).tokens_after > 0
        with CtxcompClient(server.address) as client:
            assert client.health() == "SERVING"  # probes need no token


def test_two_authorization_headers_are_refused(compressor) -> None:
    with BackgroundServer(compressor, ServerConfig(port=0, auth_token="s3cret")) as server:
        with grpc.insecure_channel(server.address) as channel:
            call = channel.unary_unary(
                "/ctxcomp.v1.Compressor/ListMethods",
                request_serializer=pb.ListMethodsRequest.SerializeToString,
                response_deserializer=pb.ListMethodsResponse.FromString,
            )
            assert call(pb.ListMethodsRequest(), metadata=[("authorization", "Bearer s3cret")], timeout=30).methods
            for pair in (["Bearer wrong", "Bearer s3cret"], ["Bearer s3cret", "Bearer wrong"], ["Bearer s3cret"] * 2):
                with pytest.raises(grpc.RpcError) as caught:
                    call(pb.ListMethodsRequest(), metadata=[("authorization", v) for v in pair], timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert caught.value.details() == "2 authorization headers; send exactly one"


def test_garbage_bytes_name_the_problem_on_every_rpc(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        for rpc in ("ListMethods", "Compress"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(f"/ctxcomp.v1.Compressor/{rpc}")(b"\xff\xff\xff\x07garbage", timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith("request: malformed"), caught.value.details()


def test_deeply_nested_options_are_called_that(client) -> None:
    deep: dict = {"x": 1}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(grpc.RpcError) as caught:
        client.compress("q", [TEXT], options={"rate": deep})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("options: nested too deeply")
    shallow: dict = {"x": 1}
    for _ in range(30):
        shallow = {"a": shallow}
    with pytest.raises(grpc.RpcError) as caught:  # parses; then refused by the method's own check
        client.compress("q", [TEXT], options={"zzz": shallow})
    assert caught.value.details().startswith("options.zzz")


def test_tls_round_trip(compressor, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    config = ServerConfig(host="localhost", port=0, tls_cert_file=str(cert), tls_key_file=str(key), auth_token="t")
    with BackgroundServer(compressor, config) as server:
        with CtxcompClient(f"localhost:{server.server.port}", root_certificates=cert.read_bytes(), token="t") as client:
            assert client.compress("q", [TEXT], rate=0.5).documents[0].text
        with CtxcompClient(f"localhost:{server.server.port}", timeout=5) as plain, pytest.raises(grpc.RpcError):
            plain.compress("q", [TEXT], rate=0.5)


def test_invalid_utf8_names_the_field(server) -> None:
    good = pb.CompressRequest(documents=[pb.Document(id="a", text="fine"), pb.Document(id="b", text="XYZ")], rate=0.5)
    raw = good.SerializeToString().replace(b"XYZ", b"X\xffZ")
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/ctxcomp.v1.Compressor/Compress")
        with pytest.raises(grpc.RpcError) as caught:
            call(raw, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "documents[1].text: not valid UTF-8"


def test_an_html_page_in_another_charset_is_refused_naming_the_field(server) -> None:
    """A page's bytes in windows-1252 are not a proto string: the field is named, nothing is guessed."""
    page = pb.Document(id="p", text="<p>Caf_ au lait</p>", format="html")
    raw = pb.CompressRequest(documents=[page], rate=0.5).SerializeToString().replace(b"Caf_", b"Caf\xe9")
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/ctxcomp.v1.Compressor/Compress")(raw, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "documents[0].text: not valid UTF-8"


def test_oversize_request_is_refused_with_the_limit(server, compressor) -> None:
    limit = compressor.limits.max_message_bytes
    with CtxcompClient(server.address, max_message_bytes=200 * 1024 * 1024) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.compress("q", [Document("big", "x" * (100 * 1024 * 1024))])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in caught.value.details()
        assert client.compress("q", [TEXT], rate=0.5).tokens_after > 0  # the server is fine


def _long_value_requests() -> list[tuple[str, pb.CompressRequest]]:
    def request(**fields) -> pb.CompressRequest:
        base = dict(query="When was it completed?", documents=[pb.Document(id="a", text=TEXT)], rate=0.5)
        return pb.CompressRequest(**{**base, **fields})

    options = request()
    options.options.update({LONG: 1})
    chat = [pb.Message(role="user", content="When was it completed?")]
    return [
        ("method", request(method=LONG)),
        ("order", request(order=LONG)),
        ("history_mode", request(messages=chat, history_mode=LONG)),
        ("messages[0].role", request(messages=[pb.Message(role=LONG, content="hi")])),
        ("documents[1].id", request(documents=[pb.Document(id=LONG, text=TEXT), pb.Document(id=LONG, text=TEXT)])),
        ("options.xxx", options),
        ("documents[0].metadata", request(documents=[pb.Document(id="a", text=TEXT, metadata={"k": "v" * 20_000})])),
        ("documents[0].metadata", request(documents=[pb.Document(id="a", text=TEXT,
                                                                 metadata={f"k{i}": "v" for i in range(100_000)})])),
    ]


@pytest.mark.parametrize("field, request_", _long_value_requests(), ids=lambda v: v if isinstance(v, str) else "")
def test_long_values_are_named_not_echoed_whole(server, field, request_) -> None:
    """8 KB and more in a field the error quotes: INVALID_ARGUMENT naming it, with a short message
    (echoed whole, the message would outgrow gRPC's metadata limit: RESOURCE_EXHAUSTED)."""
    with CtxcompClient(server.address, timeout=30) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.stub.Compress(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith(field), caught.value.details()
    assert len(caught.value.details()) < 1000


def test_expired_deadline_is_deadline_exceeded(server) -> None:
    with CtxcompClient(server.address, timeout=0.001) as hurried:
        with pytest.raises(grpc.RpcError) as caught:
            hurried.compress("q", [TEXT * 200], rate=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def serve_in_subprocess(tmp_path: Path, grace_s: float, *flags: str) -> tuple[subprocess.Popen, str]:
    """`ctxcomp serve` as a real process (its stdout is the log); returns it and its address."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxcomp.cli", "serve", "--port", "0", "--port-file", str(port_file), "--grace", str(grace_s),
         *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def sigterm_under_load(proc: subprocess.Popen, address: str, documents: list[str], calls: int) -> list:
    client = AsyncCtxcompClient(address, timeout=60)
    try:
        sent = [asyncio.ensure_future(client.compress("q", documents, rate=0.4)) for _ in range(calls)]
        await asyncio.sleep(0.5)  # all sent and accepted; most still queued behind the model
        proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*sent, return_exceptions=True)
    finally:
        await client.close()


def test_sigterm_during_load_loses_no_accepted_request(tmp_path: Path) -> None:
    proc, address = serve_in_subprocess(tmp_path, grace_s=30)
    try:
        outcomes = asyncio.run(sigterm_under_load(proc, address, [TEXT * 30], calls=16))
        assert all(not isinstance(o, Exception) for o in outcomes), [o for o in outcomes if isinstance(o, Exception)][:1]
        assert proc.wait(timeout=40) == 0
        log = proc.stdout.read()
        assert "draining" in log
        assert "torch intra-op threads: " in log and "OpenMP waits: PASSIVE" in log  # the CPU policy is said
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_takes_the_token_limits_from_its_flags(tmp_path: Path) -> None:
    proc, address = serve_in_subprocess(tmp_path, 5, "--max-request-tokens", "100", "--max-queued-tokens", "1000")
    try:
        with CtxcompClient(address, timeout=60) as client:
            assert client.list_methods().limits.max_request_tokens == 100
            with pytest.raises(grpc.RpcError) as caught:
                client.compress("q", [TEXT * 10])
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_request_tokens is 100" in caught.value.details()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_requests_cut_by_the_end_of_grace_get_unavailable_and_no_traceback(tmp_path: Path) -> None:
    proc, address = serve_in_subprocess(tmp_path, grace_s=1)
    try:
        heavy = [f"Part {i}. {TEXT * 40}" for i in range(40)]  # ~9 s of model time each
        outcomes = asyncio.run(sigterm_under_load(proc, address, heavy, calls=3))
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [o.code() for o in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 3
    assert all("shutting down" in o.details() for o in outcomes)
    assert "Traceback" not in log and "CancelledError" not in log
    assert "grace period over: 3 requests answered UNAVAILABLE" in log


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
documents = st.lists(
    st.builds(
        lambda i, t, m: pb.Document(id=i, text=t, metadata=m),
        st.text(max_size=6) | st.just(LONG),
        st.text(max_size=200) | st.sampled_from([TEXT, TEXT * 3, "1889. Paris! " * 5]),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
        | st.sampled_from([{f"k{i}": "v" for i in range(100)}, {"k": "v" * 20_000}]),
    ),
    max_size=5,
)
METHOD_NAMES = methods.method_names()


def preset(name: str):
    return methods.method_class(name).presets["default"]


def plausible(default):
    """Values of the option's own type near its range, so fuzzing reaches past type checks."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-2, 5000)
    if isinstance(default, float):
        return st.floats(-0.5, 4.0, allow_nan=False)
    if isinstance(default, str):
        return st.sampled_from([default, "", "mean", "first", "budget", "compat", "bf16", "fp32", "int8", "auto"])
    return json_values


@st.composite
def method_options(draw, name: str, wild: bool) -> dict:
    if name not in METHOD_NAMES:
        return draw(st.dictionaries(st.text(max_size=6) | st.just(LONG), json_values | st.just(LONG), max_size=2))
    names = [f.name for f in dataclasses.fields(preset(name))]
    keys = draw(st.lists(st.sampled_from([*names, "zzz"] if wild else names), max_size=3, unique=True))
    return {k: draw((json_values | plausible(getattr(preset(name), k, None))) if wild
                    else plausible(getattr(preset(name), k, None))) for k in keys}


@st.composite
def compress_requests(draw) -> pb.CompressRequest:
    """Every field of CompressRequest: all methods, chains with per-stage options, KV codecs and
    models. Half the requests are wild; the other half are well-formed in every field but the
    option values, so they get past validation into the methods, the KV stage and the store."""
    wild = draw(st.booleans())
    names = [*METHOD_NAMES, "nope", "LLMLINGUA2", LONG] if wild else METHOD_NAMES
    stages = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    method = draw(st.sampled_from(["", ">".join(stages), stages[0]]))
    well_formed_documents = st.lists(st.sampled_from([TEXT, TEXT * 3, "1889. Paris! " * 5, "Lyon is a city."]),
                                     min_size=1, max_size=4).map(
        lambda texts: [pb.Document(id=f"d{i}", text=t) for i, t in enumerate(texts)])
    request = pb.CompressRequest(
        query=draw(st.text(max_size=50) | st.just("When was the Eiffel Tower completed?")) if wild
        else "When was the Eiffel Tower completed?",
        documents=draw(documents if wild else well_formed_documents),
        method=method,
        return_word_labels=draw(st.booleans()),
        return_kv=draw(st.booleans()),
        kv_codec=draw(st.sampled_from(["", "fp16", "bf16", "int8", "int4", "transform", *(("zstd", "FP16") if wild else ())])),
        kv_model=draw(st.sampled_from(["", "SmolLM2-135M-Instruct", "gpt2", "x" * 300, LONG])) if wild else "",
        kv_best_effort=draw(st.booleans()),
    )
    pages = [PAGE, "<p>" * 50 + TEXT, "<html><script>x</script></html>", "</div><td>1889</b>", *DEEP_PAGES]
    for document in request.documents:
        if draw(st.booleans()):
            document.format = "html"
            if not wild or draw(st.booleans()):
                document.text = draw(st.sampled_from(pages))
        elif wild and draw(st.integers(0, 9)) == 0:
            document.format = draw(st.sampled_from(["pdf", "HTML", "text"]))
    request.order = draw(st.sampled_from(["", "relevance", "edges", *(("sideways", LONG) if wild else ())]))
    request.html_output = draw(st.booleans())
    if draw(st.booleans()):
        roles = ["system", "user", "assistant", *(("robot", "", LONG) if wild else ())]
        request.messages.extend(draw(st.lists(st.builds(
            lambda r, c: pb.Message(role=r, content=c), st.sampled_from(roles),
            st.text(max_size=80) | st.sampled_from([TEXT, "When was it completed?", "In 1889."])), max_size=6)))
        if draw(st.booleans()):
            request.verbatim_turns = draw(st.integers(-2, 4))
        request.history_mode = draw(st.sampled_from(["", "stable", "relevance", *(("chaos", LONG) if wild else ())]))
    target = draw(st.sampled_from(["none", "rate", "tokens"]))
    if target == "rate":
        request.rate = draw(st.floats(allow_nan=True, allow_infinity=True) | st.floats(0.05, 1.0) if wild
                            else st.floats(0.05, 1.0))
    elif target == "tokens":
        request.target_tokens = draw(st.integers(-(2**62), 2**62) | st.integers(1, 200) if wild else st.integers(1, 200))
    if ">" in method:
        options = {stage: draw(method_options(stage, wild))
                   for stage in draw(st.lists(st.sampled_from(stages), unique=True))}
    else:
        options = draw(method_options(method or "cascade", wild))
    try:
        request.options.update(options)
    except (ValueError, TypeError):
        pass
    return request


@pytest.fixture(scope="module")
def stored_client(compressor, tmp_path_factory):
    """A server with a file KV store, so return_kv runs to the end instead of being refused.
    Its prefill takes the PyTorch path a CPU server takes: the Triton interpreter, which the
    kernel tests use, needs minutes per KV request of a few hundred tokens."""
    store = open_store(f"file://{tmp_path_factory.mktemp('kv')}")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TRITON_INTERPRET", raising=False)
        with BackgroundServer(Compressor(compressor.hub, kv_store=BlobTarget(store)), ServerConfig(port=0)) as server:
            with CtxcompClient(server.address, timeout=120) as client:
                yield client


@settings(max_examples=int(os.environ.get("CTXCOMP_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=compress_requests(), rpc=st.sampled_from(["Compress", "CompressStream"]))
def test_fuzzed_requests_never_fail_internally(stored_client, request, rpc) -> None:
    """Any request, through either RPC: an answer, or INVALID_ARGUMENT/UNIMPLEMENTED naming a field."""
    try:
        if rpc == "Compress":
            stored_client.stub.Compress(request, timeout=60)
        else:
            chunks = list(stored_client.stub.CompressStream(request, timeout=60))
            assert chunks[0].HasField("response")
        event(f"OK{' with KV' if request.return_kv else ''}")
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED), error.details()
        field = error.details().split(":", 1)[0]
        assert field.startswith(FIELD_PATHS), error.details()
        assert len(error.details()) < 2500, "an error echoed a client's value whole"
    assert stored_client.stub.ListMethods(pb.ListMethodsRequest(), timeout=60).methods  # still serving


@pytest.fixture(scope="module")
def stored_gateway(compressor, tmp_path_factory):
    """stored_client's server with the HTTP/JSON gateway beside it."""
    store = open_store(f"file://{tmp_path_factory.mktemp('kv-http')}")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TRITON_INTERPRET", raising=False)
        config = ServerConfig(port=0, http_port=0)
        with BackgroundServer(Compressor(compressor.hub, kv_store=BlobTarget(store)), config) as server:
            with CtxcompClient(server.address, timeout=120) as client:
                yield server.server.http_port, client


def post_json(port: int, body: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/compress", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@settings(max_examples=int(os.environ.get("CTXCOMP_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=compress_requests())
def test_fuzzed_requests_over_http_get_the_status_and_field_grpc_gives(stored_gateway, request) -> None:
    """The same fuzzed requests as JSON: never a 5xx, and every gRPC refusal is the mapped 4xx
    naming the same field."""
    from google.protobuf import json_format

    from ctxcomp.service.http_gateway import HTTP_STATUS

    port, client = stored_gateway
    try:
        body = json_format.MessageToJson(request)
    except json_format.SerializeToJsonError:  # an infinite or NaN option value: JSON has no way to say it
        assume(False)
    try:
        client.stub.Compress(request, timeout=60)
        refused = None
    except grpc.RpcError as error:
        refused = error
    status, body = post_json(port, body)
    assert status < 500, body
    if refused is None:
        event("OK")
        assert status == 200, body
        return
    event(refused.code().name)
    assert status == HTTP_STATUS[refused.code()], body
    assert body["error"]["status"] == refused.code().name and body["error"]["message"] == refused.details()
    if refused.code() is grpc.StatusCode.INVALID_ARGUMENT:
        assert body["error"]["field"] == refused.details().split(": ", 1)[0]
