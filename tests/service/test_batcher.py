"""The micro-batcher on its own; through a server: tests/service/test_faults.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.service.batcher import BatcherConfig, MicroBatcher
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
