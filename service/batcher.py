"""Micro-batching in front of the model worker: requests that arrive while a batch
is computing are compressed together in the next one (one encoder pass), with a
bounded queue so overload is refused at once instead of piling up."""

from __future__ import annotations

import asyncio
import ctypes
from typing import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from ctxcomp.errors import CtxcompError
from ctxcomp.pipeline import Compressor, Plan
from ctxcomp.types import CompressRequest, CompressResult


def _load_malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0)


_release_free_heap = _load_malloc_trim()


class Overloaded(CtxcompError):
    """The admission queue is full; the client should back off and retry."""


@dataclass(frozen=True)
class BatcherConfig:
    max_batch: int = 32  # requests per compress_batch call
    max_queue: int = 256  # waiting requests before new ones are refused
    max_wait_ms: float = 0.0  # extra wait for company; 0 = take whatever queued meanwhile


@dataclass
class _Pending:
    plan: Plan
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self, compressor: Compressor, executor: Executor, config: BatcherConfig,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.compressor = compressor
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.executor = executor
        self.config = config
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.max_queue)
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests
        self.seconds_per_request = 0.0  # moving average of model time per request
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ctxcomp-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, request: CompressRequest, deadline_s: float | None = None) -> CompressResult:
        """Plan now, in a thread (errors name the field; a first KV request may load the LLM,
        which must not block the event loop), then wait for the batch holding this request.

        With a deadline, a request that would wait longer than it has left (by the
        queue length and the recent time per request) is refused at once: queued,
        it would only expire and delay the requests behind it. An empty queue admits
        everything: then only the request's own work stands between it and its deadline.
        """
        plan = await asyncio.to_thread(self.compressor.plan, request)
        if deadline_s is not None and self.queue.qsize():
            expected = (self.queue.qsize() + 1) * self.seconds_per_request
            if expected > deadline_s:
                raise Overloaded(
                    f"server busy: expected wait {expected:.2f} s exceeds the {deadline_s:.2f} s left before the deadline"
                )
        pending = _Pending(plan, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"server busy: {self.config.max_queue} requests already queued; retry later") from None
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_wait_ms / 1000.0
        while len(batch) < self.config.max_batch:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
        # A caller that gave up (deadline, cancellation) costs no model time.
        return [p for p in batch if not p.future.done()]

    def _compress(self, plans: list[Plan]) -> list[CompressResult | Exception]:
        """Results of the batch, or, when it fails, of each request alone: one request's
        error is its own, never its batch-mates'."""
        try:
            return list(self.compressor.run_each(plans))
        except Exception:  # noqa: BLE001 - find whose error it is
            return [self._alone(plan) for plan in plans]
        finally:
            # Batches allocate many differently sized tensors; hand freed heap back to the
            # OS so the server's RSS tracks its working set instead of its high-water mark.
            _release_free_heap()

    def _alone(self, plan: Plan) -> CompressResult | Exception:
        try:
            return self.compressor.run_each([plan])[0]
        except Exception as error:  # noqa: BLE001 - delivered to this request's caller
            return error

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            started = loop.time()
            results = await loop.run_in_executor(self.executor, self._compress, [p.plan for p in batch])
            per_request = (loop.time() - started) / len(batch)
            self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * per_request
            for p, outcome in zip(batch, results):
                if p.future.done():
                    continue
                if isinstance(outcome, Exception):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
