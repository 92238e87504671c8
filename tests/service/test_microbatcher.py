"""The micro-batcher on its own; through a server: tests/service/test_faults.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.service.microbatcher import BatcherConfig, MicroBatcher
from ctxcomp.types import CompressRequest, Document

TEXT = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris, France."


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


@pytest.mark.parametrize("company_wait", [0.0, 0.5])
def test_callers_of_the_last_batch_are_waited_for(compressor, company_wait) -> None:
    """After a batch of 3 that took 2 s, the next batch waits up to company_wait x 2 s for 3 requests:
    three arriving 150 ms apart run together; with the wait off, the first runs alone.
    After a batch of one, a lone request starts at once."""

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(compressor, executor, BatcherConfig(company_wait=company_wait))
            batcher.start()
            try:
                await batcher.submit(CompressRequest("When?", (Document("a", TEXT),), rate=0.5))  # warm
                batcher._last_batch = (3, 2.0)
                before = len(batcher.batch_sizes)

                async def later(delay: float):
                    await asyncio.sleep(delay)
                    return await batcher.submit(CompressRequest("When?", (Document("a", TEXT),), rate=0.5))

                await asyncio.gather(*(later(0.15 * i) for i in range(3)))
                sizes = batcher.batch_sizes[before:]
                assert sizes == [3] if company_wait else (len(sizes) >= 2 and sizes[0] == 1)
                batcher._last_batch = (1, 2.0)
                started = asyncio.get_running_loop().time()
                await batcher.submit(CompressRequest("When?", (Document("a", TEXT),), rate=0.5))
                assert asyncio.get_running_loop().time() - started < 0.5
            finally:
                await batcher.stop()

    asyncio.run(scenario())
