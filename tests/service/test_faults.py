"""Faults and isolation through real servers (and a real redis-server): a corrupt stored blob,
a store that is down or frozen, batch-mates that share neither options nor errors, and
client-invented method names in /metrics."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from ctxcomp.client import AsyncCtxcompClient, CtxcompClient
from ctxcomp.kv import blob
from ctxcomp.kv.stage import BlobTarget
from ctxcomp.kv.store import open_store
from ctxcomp.pipeline import Compressor
from ctxcomp.service.microbatcher import BatcherConfig
from ctxcomp.service.server import BackgroundServer, ServerConfig
from ctxcomp.types import CompressRequest, Document

QUERY = "Why did the Vasa sink?"
TEXT = (
    "The Vasa sank in 1628 because it was top-heavy: its upper gun deck carried too many heavy cannons. "
    "A gust of wind heeled it over and water poured in through the open gun ports."
)
# Batch-mates must arrive while the worker waits for company.
TOGETHER = ServerConfig(port=0, batching=BatcherConfig(max_wait_ms=300))


def sample(server: BackgroundServer, name: str, **labels: str) -> float:
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


async def side_by_side(address: str, *calls: dict) -> list:
    """Send the calls at once (one micro-batch); each outcome is a result or an RpcError."""
    client = AsyncCtxcompClient(address, timeout=120)
    try:
        return await asyncio.gather(
            *(client.compress(c.pop("query", QUERY), c.pop("documents", [TEXT]), **c) for c in calls),
            return_exceptions=True,
        )
    finally:
        await client.close()


DAMAGES = {
    "one flipped byte": lambda data: data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :],
    "truncated to 10 bytes": lambda data: data[:10],
    "emptied": lambda data: b"",
}


def test_a_corrupt_stored_blob_is_replaced_not_served(hub, tmp_path) -> None:
    store = open_store(f"file://{tmp_path}/kv")
    args = dict(method="llmlingua2", rate=0.5, return_kv=True, kv_codec="int8")
    with BackgroundServer(Compressor(hub, kv_store=BlobTarget(store)), ServerConfig(port=0)) as server:
        with CtxcompClient(server.address, timeout=120) as client:
            key = client.compress(QUERY, [TEXT], **args).kv_keys[0]
            path = store.store._path(key)
            good = blob.inspect(path.read_bytes())
            for damage in DAMAGES.values():
                path.write_bytes(damage(path.read_bytes()))
                assert client.compress(QUERY, [TEXT], **args).kv_keys == (key,)
                assert blob.inspect(path.read_bytes()) == good  # recomputed and stored anew
            assert client.compress(QUERY, [TEXT], **args).kv_keys == (key,)
        assert sample(server, "ctxcomp_kv_store_lookups_total", outcome="corrupt") == len(DAMAGES)
        assert sample(server, "ctxcomp_kv_store_lookups_total", outcome="hit") == 1
        assert sample(server, "ctxcomp_kv_store_lookups_total", outcome="miss") == 1


def test_a_blob_under_the_wrong_key_in_redis_is_replaced(hub, redis_server) -> None:
    store = open_store(redis_server.url)
    args = dict(method="llmlingua2", rate=0.5, return_kv=True)
    with BackgroundServer(Compressor(hub, kv_store=BlobTarget(store)), ServerConfig(port=0)) as server:
        with CtxcompClient(server.address, timeout=120) as client:
            key = client.compress(QUERY, [TEXT], **args).kv_keys[0]
            other = client.compress(QUERY, ["Stockholm weather: rain."], **args).kv_keys[0]
            right = store.get(key)
            store.put(key, store.get(other))  # intact, but the tokens of another context
            assert client.compress(QUERY, [TEXT], **args).kv_keys == (key,)
            assert blob.inspect(store.get(key)) == blob.inspect(right)
            store.store.client.set(f"ctxcomp:kv:{key}", b"garbage")  # what a stray SET leaves
            assert client.compress(QUERY, [TEXT], **args).kv_keys == (key,)
            assert blob.inspect(store.get(key)) == blob.inspect(right)
        assert sample(server, "ctxcomp_kv_store_lookups_total", outcome="corrupt") == 2


def test_a_store_outage_is_unavailable_for_kv_requests_only(hub, redis_server) -> None:
    store = open_store(redis_server.url, timeout_s=0.3, retry_after_s=0.5)
    kv = dict(method="llmlingua2", rate=0.5, return_kv=True)
    plain = dict(method="exit")
    with BackgroundServer(Compressor(hub, kv_store=BlobTarget(store)), TOGETHER) as server:
        alone = asyncio.run(side_by_side(server.address, dict(plain)))[0]
        for outage, resume in ((redis_server.freeze, redis_server.thaw), (redis_server.kill, redis_server.start)):
            outage()
            started = time.monotonic()
            failed, served, best_effort = asyncio.run(
                side_by_side(server.address, dict(kv), dict(plain), dict(kv, kv_best_effort=True))
            )
            assert time.monotonic() - started < 5
            assert failed.code() == grpc.StatusCode.UNAVAILABLE, failed
            assert "KV store (redis)" in failed.details() and "127.0.0.1" not in failed.details()
            assert served.context == alone.context
            assert best_effort.kv_keys == () and "served without the KV blob" in best_effort.note
            assert best_effort.context  # the text still comes back
            resume()
            time.sleep(0.6)  # the breaker's retry_after_s
            assert asyncio.run(side_by_side(server.address, dict(kv)))[0].kv_keys
        assert max(server.server.batcher.batch_sizes) >= 3
        assert sample(server, "ctxcomp_requests_total", method="llmlingua2", rpc="Compress", code="UNAVAILABLE") == 2


def test_batch_mates_keep_their_own_options_and_errors(hub, tmp_path) -> None:
    compressor = Compressor(hub, kv_store=BlobTarget(open_store(f"file://{tmp_path}/kv")))
    chain = "exit>llmlingua2"
    loose = {"exit": {"threshold": 0.05}, "llmlingua2": {"rate": 0.9}}
    tight = {"exit": {"threshold": 0.5}, "llmlingua2": {"rate": 0.2}}
    with BackgroundServer(compressor, TOGETHER) as server:
        outcomes = asyncio.run(
            side_by_side(
                server.address,
                dict(method=chain, options=loose),
                dict(method=chain, options=tight),
                dict(method="llmlingua2", documents=[" "], return_kv=True),  # an empty context: no KV to compute
                dict(method="exit"),
            )
        )
        assert max(server.server.batcher.batch_sizes) == 4
    for outcome, options in zip(outcomes[:2], (loose, tight)):
        alone = compressor.compress(CompressRequest(QUERY, (Document("0", TEXT),), method=chain, options=options))
        assert outcome.context == alone.context
    assert outcomes[0].tokens_after > outcomes[1].tokens_after
    assert outcomes[2].code() == grpc.StatusCode.INVALID_ARGUMENT and outcomes[2].details().startswith("return_kv:")
    assert outcomes[3].context == compressor.compress(CompressRequest(QUERY, (Document("0", TEXT),), method="exit")).context


def test_only_real_method_names_become_metric_labels(server, client) -> None:
    invented = [f"made-up-{i}" for i in range(30)]
    for name in invented:
        with pytest.raises(grpc.RpcError) as caught:
            client.compress(QUERY, [TEXT], method=name)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client.compress(QUERY, [TEXT], method="exit>llmlingua2")
    names = {
        s.labels.get("method")
        for family in server.server.metrics.registry.collect()
        for s in family.samples
        if "method" in s.labels
    }
    assert not names & set(invented)
    assert {"invalid", "exit>llmlingua2"} <= names
    assert sample(server, "ctxcomp_requests_total", method="invalid", rpc="Compress", code="INVALID_ARGUMENT") >= 30


def test_chains_get_a_bounded_number_of_metric_labels() -> None:
    """Valid chains number ~10^5 (ordered subsets of the methods): only the first few are named."""
    from itertools import permutations

    from ctxcomp.methods import method_names
    from ctxcomp.service.metrics import MAX_CHAIN_LABELS, Metrics

    metrics = Metrics()
    chains = [">".join(p) for p in permutations(method_names(), 2)][: MAX_CHAIN_LABELS + 20]
    labels = {metrics.method_label(chain) for chain in chains}
    assert len(labels) == MAX_CHAIN_LABELS + 1 and "chain" in labels
    assert metrics.method_label(chains[0]) == chains[0]  # a named chain keeps its label
    assert metrics.method_label("exit") == "exit" and metrics.method_label("exit>exit") == "invalid"


def many_documents(count: int) -> list[str]:
    """About 1,350 downstream-LLM tokens a document; 40 of them keep the worker busy ~9 s on 2 cores."""
    return [f"Part {i}. " + TEXT * 30 for i in range(count)]


def test_a_request_over_the_token_limit_is_refused_up_front(hub) -> None:
    from ctxcomp.pipeline import Limits

    compressor = Compressor(hub, limits=Limits(max_request_tokens=2_000))
    with BackgroundServer(compressor, ServerConfig(port=0)) as server, CtxcompClient(server.address, timeout=60) as client:
        assert client.list_methods().limits.max_request_tokens == 2_000
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            client.compress(QUERY, many_documents(2))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("documents:") and "max_request_tokens is 2000" in caught.value.details()
        assert time.monotonic() - started < 2
        assert client.compress(QUERY, many_documents(1)).tokens_after > 0


def test_expired_and_cancelled_work_stops_within_a_model_batch(hub) -> None:
    """A request worth ~9 s of model time whose deadline passes after 1 s (the server's own
    deadline handling: the client waits on), or whose caller cancels, frees the worker for
    the request queued behind it within about one model batch."""
    big = many_documents(40)

    async def scenario(leave) -> float:
        client = AsyncCtxcompClient(server.address, timeout=60)
        try:
            started = time.monotonic()
            heavy = asyncio.ensure_future(leave(client))
            await asyncio.sleep(0.3)  # the heavy batch is running
            await client.compress(QUERY, [TEXT], method="cascade")
            waited = time.monotonic() - started
            outcome = (await asyncio.gather(heavy, return_exceptions=True))[0]
            assert isinstance(outcome, (grpc.RpcError, asyncio.CancelledError)), outcome
            return waited
        finally:
            await client.close()

    async def expire(client: AsyncCtxcompClient) -> None:
        await client.stub.Compress(client_request(big), timeout=1.0)

    async def cancel(client: AsyncCtxcompClient) -> None:
        call = client.stub.Compress(client_request(big), timeout=60)
        await asyncio.sleep(1.0)
        call.cancel()
        await call

    with BackgroundServer(Compressor(hub), ServerConfig(port=0)) as server:
        for leave in (expire, cancel):
            assert asyncio.run(scenario(leave)) < 4.0, leave.__name__
        batcher = server.server.batcher
        # The small request no longer waits for the heavy one, so it may be back before the
        # heavy one reaches its next checkpoint: that must come within about a model batch.
        # (Or, on a machine slow enough that planning took the second, it never started.)
        stopped_by = time.monotonic() + 3.0
        while batcher.cancelled_batches + batcher.skipped_requests < 2 and time.monotonic() < stopped_by:
            time.sleep(0.05)
        assert batcher.cancelled_batches + batcher.skipped_requests >= 2
        codes = finished_by_code(server.server.metrics)
        assert codes.get("DEADLINE_EXCEEDED", 0) >= 1 and codes.get("CANCELLED", 0) >= 1, codes  # /metrics counts them


def finished_by_code(metrics) -> dict[str, float]:
    """ctxcomp_requests_total summed per gRPC status code."""
    codes: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "ctxcomp_requests_total":
                codes[sample.labels["code"]] = codes.get(sample.labels["code"], 0) + sample.value
    return codes


def test_small_requests_run_between_the_slices_of_a_large_one(hub) -> None:
    """A request worth ~9 s of model work runs in the large lane; small requests sent meanwhile
    wait about one of its model batches, not for all of it, and it completes all the same."""
    big = many_documents(40)

    async def scenario(server) -> tuple[float, list[float], object]:
        client = AsyncCtxcompClient(server.address, timeout=120)
        try:
            async def timed() -> float:
                started = time.monotonic()
                await client.compress(QUERY, [TEXT], method="cascade")
                return time.monotonic() - started

            quiet = min([await timed() for _ in range(3)])
            heavy = asyncio.ensure_future(client.compress(QUERY, big, method="cascade"))
            await asyncio.sleep(0.5)
            busy = [await timed() for _ in range(5)]
            return quiet, busy, await heavy
        finally:
            await client.close()

    with BackgroundServer(Compressor(hub), ServerConfig(port=0)) as server:
        quiet, busy, heavy = asyncio.run(scenario(server))
        assert heavy.tokens_after > 0
        assert server.server.batcher.worker.slices >= len(busy)
    assert max(busy) < quiet + 2.0, (quiet, busy)  # a slice, not the ~9 s of the heavy request


def test_a_request_whose_deadline_passes_in_the_queue_never_runs(hub) -> None:
    """The server's own deadline handling: a large request queued behind ~9 s of large work
    with 1.5 s left is answered DEADLINE_EXCEEDED when its time is up, and the batcher drops it
    unrun when the worker frees, rather than computing a result nobody waits for."""
    big = many_documents(40)

    async def scenario(server) -> tuple[object, float]:
        heavy_client = AsyncCtxcompClient(server.address, timeout=60)
        hurried = AsyncCtxcompClient(server.address, timeout=60)
        try:
            heavy = asyncio.ensure_future(heavy_client.stub.Compress(client_request(big), timeout=60))
            await asyncio.sleep(0.5)  # the heavy request holds the large lane
            started = time.monotonic()
            try:
                await hurried.stub.Compress(client_request(big), timeout=1.5)  # large too: queued behind it
                outcome = None
            except grpc.RpcError as error:
                outcome = error.code()
            waited = time.monotonic() - started
            await heavy
            return outcome, waited
        finally:
            await heavy_client.close()
            await hurried.close()

    with BackgroundServer(Compressor(hub), ServerConfig(port=0)) as server:
        batcher = server.server.batcher
        assert batcher.skipped_requests == 0
        outcome, waited = asyncio.run(scenario(server))
        assert outcome == grpc.StatusCode.DEADLINE_EXCEEDED and waited < 2.5
        assert batcher.skipped_requests == 1  # dropped when its turn came, never run
        assert batcher.cancelled_batches == 0  # the heavy request's batch was not disturbed


def client_request(documents: list[str]):
    from ctxcomp.client import build_request

    return build_request(QUERY, documents, method="cascade")


def test_admission_counts_queued_cost_not_only_requests(hub) -> None:
    config = ServerConfig(port=0, batching=BatcherConfig(max_queued_tokens=10_000))
    with BackgroundServer(Compressor(hub), config) as server:

        async def scenario() -> list:
            client = AsyncCtxcompClient(server.address, timeout=3)
            try:
                first = asyncio.ensure_future(client.compress(QUERY, many_documents(10)))  # ~13.5k tokens: runs
                await asyncio.sleep(0.3)
                second = asyncio.ensure_future(client.compress(QUERY, many_documents(10)))  # waits: the queue was empty
                await asyncio.sleep(0.3)
                third = client.compress(QUERY, many_documents(10))  # would wait behind 13.5k queued units
                small = client.compress(QUERY, [TEXT])  # its own lane: nothing queued there
                return await asyncio.gather(third, small, first, second, return_exceptions=True)
            finally:
                await client.close()

        refused, small = asyncio.run(scenario())[:2]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cost units already queued (large requests)" in refused.details()
    assert small.tokens_after > 0


def test_a_chain_that_empties_the_context_says_why(client) -> None:
    options = {"exit": {"threshold": 0.99, "min_sentences": 1}, "recomp_extractive": {"rate": 0.05}}
    result = client.compress(QUERY, [TEXT, "Stockholm weather: rain, then sun."], method="exit>recomp_extractive>llmlingua2",
                             options=options)
    assert result.context == ""
    assert "recomp_extractive kept none of the" in result.note and "so llmlingua2 had no text" in result.note
