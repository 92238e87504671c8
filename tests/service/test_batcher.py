"""The micro-batcher: plans once off the event loop, and one request's error stays its own."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.service.batcher import BatcherConfig, MicroBatcher
from ctxcomp.types import CompressRequest, Document

TEXT = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris, France."


def test_a_failing_request_does_not_fail_its_batch_mates(compressor) -> None:
    good = CompressRequest("When was the tower completed?", (Document("a", TEXT),), method="exit")
    # Prefilling an empty compressed context fails while the batch runs, not while planning.
    empty_kv = CompressRequest("When was the tower completed?", (Document("b", " "),), method="llmlingua2", return_kv=True)
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(compressor, executor, BatcherConfig())
        outcomes = batcher._compress([compressor.plan(good), compressor.plan(empty_kv)])
    assert outcomes[0].context == compressor.compress(good).context
    assert isinstance(outcomes[1], InvalidRequest) and outcomes[1].field == "return_kv"


def test_submit_plans_in_a_thread_and_names_bad_fields(compressor) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(compressor, executor, BatcherConfig())
            batcher.start()
            try:
                result = await batcher.submit(CompressRequest("When?", (Document("a", TEXT),), rate=0.5))
                assert result.tokens_after <= result.tokens_before // 2
                with pytest.raises(InvalidRequest) as err:
                    await batcher.submit(CompressRequest("When?", (Document("a", TEXT),), rate=5.0))
                assert err.value.field == "rate"
            finally:
                await batcher.stop()

    asyncio.run(scenario())
