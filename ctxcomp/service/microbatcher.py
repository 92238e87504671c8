"""Micro-batching in front of the model worker: requests that arrive while a batch
is computing are compressed together in the next one (one encoder pass).

Requests are admitted and scheduled by their estimated cost (`Plan.cost`: tokens through
each model, HTML elements, KV prefill), not by count. Two lanes share the worker
(ctxcomp.service.worker): small requests are batched as above; a request costing more than
`large_cost` runs alone in the large lane, in slices between model batches, with the small
batches that wait run in between. Each lane's queue is bounded in requests and in cost, and
a request that would not be served before its deadline is refused at once. A batch whose
requests are cancelled or expire stops at the next model batch (ctxcomp.cancellation); its
other requests run again without them."""

from __future__ import annotations

import asyncio
import ctypes
from typing import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from ctxcomp.cancellation import Cancelled, cancellable
from ctxcomp.errors import Overloaded, ShuttingDown
from ctxcomp.pipeline import Compressor, Plan
from ctxcomp.service.worker import Lane, SharedWorker
from ctxcomp.types import CompressRequest, CompressResult


def _load_malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0)


release_free_heap = _load_malloc_trim()


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
    max_queued_tokens: int = 1 << 20  # cost units (Plan.cost) waiting in a lane before new requests are refused
    # A request costing more than this runs in the large lane (alone, in slices). About 2 s of
    # work on 2 cores: a normal RAG request (a few documents, a few thousand tokens) stays small.
    large_cost: int = 8_000


@dataclass
class _Pending:
    plan: Plan
    future: asyncio.Future


@dataclass
class _Lane:
    """One queue in front of the shared worker, with the thread its batches run on."""

    name: Lane
    max_batch: int
    queue: asyncio.Queue
    executor: Executor
    queued_cost: int = 0  # cost of the requests waiting in the queue
    task: asyncio.Task | None = None


class MicroBatcher:
    def __init__(
        self, compressor: Compressor, executor: Executor, config: BatcherConfig,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.compressor = compressor
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.config = config
        self.worker = SharedWorker()
        # The small lane runs on the server's executor; the large lane on a thread of its own,
        # which waits at its checkpoints while the small lane's thread computes.
        self._large_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxcomp-model-large")
        self.lanes: dict[Lane, _Lane] = {
            "small": _Lane("small", config.max_batch, asyncio.Queue(maxsize=config.max_queue), executor),
            "large": _Lane("large", 1, asyncio.Queue(maxsize=config.max_queue), self._large_executor),
        }
        self.batch_sizes: list[int] = []  # recent small-lane batch sizes, for metrics and tests
        self.seconds_per_cost = 0.0  # moving average of model time per cost unit
        self.cancelled_batches = 0  # batches stopped early because a request left (tests, metrics)
        self.skipped_requests = 0  # requests whose caller left before their batch started: never run
        self._unanswered: set[asyncio.Future] = set()  # admitted requests without an outcome yet
        self._last_batch = (0, 0.0)  # (requests, model seconds) of the last small batch: the company to wait for

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self.lanes.values():
            lane.task = loop.create_task(self._run(lane), name=f"ctxcomp-batcher-{lane.name}")

    async def stop(self) -> None:
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._large_executor.shutdown(wait=False, cancel_futures=True)

    def lane_for(self, plan: Plan) -> _Lane:
        return self.lanes["large" if plan.cost > self.config.large_cost else "small"]

    async def submit(self, request: CompressRequest, deadline_s: float | None = None) -> CompressResult:
        """Plan now, in a thread (errors name the field; a first KV request may load the LLM,
        which must not block the event loop), then wait for the batch holding this request.

        With a deadline, a request that would wait longer than it has left (by the cost
        queued ahead of it in its lane and the recent time per cost unit) is refused at once:
        queued, it would only expire and delay the requests behind it. An empty queue admits
        everything: then only the request's own work stands between it and its deadline.
        """
        plan = await asyncio.to_thread(self.compressor.plan, request)
        lane, cost = self.lane_for(plan), plan.cost
        if lane.queue.qsize() and lane.queued_cost + cost > self.config.max_queued_tokens:
            raise Overloaded(
                f"server busy: {lane.queued_cost} cost units already queued ({lane.name} requests), "
                f"limit {self.config.max_queued_tokens}; retry later"
            )
        if deadline_s is not None and lane.queue.qsize():
            expected = (lane.queued_cost + cost) * self.seconds_per_cost
            if expected > deadline_s:
                raise Overloaded(
                    f"server busy: expected wait {expected:.2f} s exceeds the {deadline_s:.2f} s left before the deadline"
                )
        pending = _Pending(plan, asyncio.get_running_loop().create_future())
        try:
            lane.queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"server busy: {self.config.max_queue} {lane.name} requests already queued; retry later") from None
        lane.queued_cost += cost
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

    @staticmethod
    def _take(lane: _Lane, pending: _Pending) -> _Pending:
        lane.queued_cost -= pending.plan.cost
        return pending

    async def _collect(self, lane: _Lane) -> list[_Pending]:
        batch = [self._take(lane, await lane.queue.get())]
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited_for, seconds = self._last_batch if lane.name == "small" else (0, 0.0)
        fixed_until = started + self.config.max_wait_ms / 1000.0
        company_until = started + self.config.company_wait * seconds
        while len(batch) < lane.max_batch:
            try:
                batch.append(self._take(lane, lane.queue.get_nowait()))
            except asyncio.QueueEmpty:
                left = max(fixed_until, company_until if len(batch) < waited_for else started) - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(self._take(lane, await asyncio.wait_for(lane.queue.get(), left)))
                except TimeoutError:
                    break
        # A caller that gave up (deadline, cancellation) costs no model time.
        live = [p for p in batch if not p.future.done()]
        self.skipped_requests += len(batch) - len(live)
        return live

    def _compress(self, lane: Lane, batch: list[_Pending]) -> list[CompressResult | Exception | None]:
        """Outcomes of the batch, in its order; None for a request that left (cancelled,
        expired) before its result. When a request leaves mid-batch, the work stops at the
        next model batch and the others run again without it. When the batch fails, each
        request runs alone: one request's error is its own, never its batch-mates'."""
        outcomes: dict[int, CompressResult | Exception] = {}
        live = list(range(len(batch)))
        try:
            with self.worker.turn(lane):
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
            release_free_heap()
        return [outcomes.get(i) for i in range(len(batch))]

    def _alone(self, pending: _Pending) -> CompressResult | Exception:
        try:
            with cancellable(pending.future.done):
                return self.compressor.run_each([pending.plan])[0]
        except Exception as error:  # noqa: BLE001 - delivered to this request's caller
            return error

    async def _run(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(lane)
            if not batch:
                continue
            if lane.name == "small":
                self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            started = loop.time()
            results = await loop.run_in_executor(lane.executor, self._compress, lane.name, batch)
            seconds = loop.time() - started
            if lane.name == "small":
                self._last_batch = (len(batch), seconds)
                served = sum(p.plan.cost for p, outcome in zip(batch, results) if outcome is not None)
                if served:  # the small lane's time is its own work: the large lane waits meanwhile
                    self.seconds_per_cost = 0.8 * self.seconds_per_cost + 0.2 * seconds / served
            for p, outcome in zip(batch, results):
                if p.future.done() or outcome is None:
                    continue
                if isinstance(outcome, Exception):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
