"""Micro-batching in front of the model worker: requests that arrive while a batch
is computing are compressed together in the next one (one encoder pass).

Admission counts cost, not only requests: the queue is bounded in requests and in
downstream-LLM tokens, and a request that would not be served before its deadline
is refused at once. A batch whose requests are cancelled or expire stops at the
next model batch (ctxcomp.cancellation); its other requests run again without them."""

from __future__ import annotations

import asyncio
import ctypes
from typing import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from ctxcomp.cancellation import Cancelled, cancellable
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


class ShuttingDown(CtxcompError):
    """The server is stopping and its grace period is over; the client should retry elsewhere."""


@dataclass(frozen=True)
class BatcherConfig:
    max_batch: int = 32  # requests per compress_batch call
    max_queue: int = 256  # waiting requests before new ones are refused
    max_wait_ms: float = 0.0  # extra wait for company; 0 = take whatever queued meanwhile
    # Wait for as many requests as the last batch had, up to this share of its model time:
    # callers answered together come back together, a few ms apart, and a batch started on
    # the first of them leaves the rest for a second, smaller one (at 16 closed-loop clients
    # 7.8 requests per batch instead of 16, 27% more CPU per request; bench/load.py P2).
    # A lone caller (last batch of 1) never waits. 0 = off.
    company_wait: float = 0.1
    max_queued_tokens: int = 1 << 20  # downstream-LLM tokens waiting before new requests are refused


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
        self.seconds_per_token = 0.0  # moving average of model time per downstream-LLM token
        self.queued_tokens = 0  # cost of the requests waiting in the queue
        self.cancelled_batches = 0  # batches stopped early because a request left (tests, metrics)
        self.skipped_requests = 0  # requests whose caller left before their batch started: never run
        self._unanswered: set[asyncio.Future] = set()  # admitted requests without an outcome yet
        self._last_batch = (0, 0.0)  # (requests, model seconds) of the last batch: the company to wait for
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
        tokens queued ahead of it and the recent time per token) is refused at once:
        queued, it would only expire and delay the requests behind it. An empty queue
        admits everything: then only the request's own work stands between it and its deadline.
        """
        plan = await asyncio.to_thread(self.compressor.plan, request)
        cost = plan.cost_tokens
        if self.queue.qsize() and self.queued_tokens + cost > self.config.max_queued_tokens:
            raise Overloaded(
                f"server busy: {self.queued_tokens} tokens already queued, limit {self.config.max_queued_tokens}; retry later"
            )
        if deadline_s is not None and self.queue.qsize():
            expected = (self.queued_tokens + cost) * self.seconds_per_token
            if expected > deadline_s:
                raise Overloaded(
                    f"server busy: expected wait {expected:.2f} s exceeds the {deadline_s:.2f} s left before the deadline"
                )
        pending = _Pending(plan, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"server busy: {self.config.max_queue} requests already queued; retry later") from None
        self.queued_tokens += cost
        self._unanswered.add(pending.future)
        pending.future.add_done_callback(self._unanswered.discard)
        return await pending.future

    async def drain(self, grace_s: float) -> int:
        """Wait up to grace_s for every admitted request to be answered; then answer the rest
        with ShuttingDown (their batch stops at its next checkpoint). Returns how many were
        cut short. Handlers so end with a status of ours, not a cancellation by grpc."""
        if self._unanswered:
            await asyncio.wait(set(self._unanswered), timeout=grace_s)
        left = [f for f in self._unanswered if not f.done()]
        for future in left:
            future.set_exception(ShuttingDown("the server is shutting down and its grace period is over; retry"))
        return len(left)

    def _take(self, pending: _Pending) -> _Pending:
        self.queued_tokens -= pending.plan.cost_tokens
        return pending

    async def _collect(self) -> list[_Pending]:
        batch = [self._take(await self.queue.get())]
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited_for, seconds = self._last_batch
        fixed_until = started + self.config.max_wait_ms / 1000.0
        company_until = started + self.config.company_wait * seconds
        while len(batch) < self.config.max_batch:
            try:
                batch.append(self._take(self.queue.get_nowait()))
            except asyncio.QueueEmpty:
                left = max(fixed_until, company_until if len(batch) < waited_for else started) - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(self._take(await asyncio.wait_for(self.queue.get(), left)))
                except TimeoutError:
                    break
        # A caller that gave up (deadline, cancellation) costs no model time.
        live = [p for p in batch if not p.future.done()]
        self.skipped_requests += len(batch) - len(live)
        return live

    def _compress(self, batch: list[_Pending]) -> list[CompressResult | Exception | None]:
        """Outcomes of the batch, in its order; None for a request that left (cancelled,
        expired) before its result. When a request leaves mid-batch, the work stops at the
        next model batch and the others run again without it. When the batch fails, each
        request runs alone: one request's error is its own, never its batch-mates'."""
        outcomes: dict[int, CompressResult | Exception] = {}
        live = list(range(len(batch)))
        try:
            while live := [i for i in live if not batch[i].future.done()]:
                try:
                    with cancellable(lambda: any(batch[i].future.done() for i in live)):
                        outcomes.update(zip(live, self.compressor.run_each([batch[i].plan for i in live])))
                    break
                except Cancelled:
                    self.cancelled_batches += 1
                except Exception:  # noqa: BLE001 - find whose error it is
                    for i in live:
                        outcomes[i] = self._alone(batch[i])
                    break
        finally:
            # Batches allocate many differently sized tensors; hand freed heap back to the
            # OS so the server's RSS tracks its working set instead of its high-water mark.
            _release_free_heap()
        return [outcomes.get(i) for i in range(len(batch))]

    def _alone(self, pending: _Pending) -> CompressResult | Exception:
        try:
            with cancellable(pending.future.done):
                return self.compressor.run_each([pending.plan])[0]
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
            results = await loop.run_in_executor(self.executor, self._compress, batch)
            self._last_batch = (len(batch), loop.time() - started)
            served = sum(p.plan.cost_tokens for p, outcome in zip(batch, results) if outcome is not None)
            if served:
                self.seconds_per_token = 0.8 * self.seconds_per_token + 0.2 * (loop.time() - started) / served
            for p, outcome in zip(batch, results):
                if p.future.done() or outcome is None:
                    continue
                if isinstance(outcome, Exception):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
