"""The model worker's time, shared between small batches and large requests.

One request of ten thousand HTML blocks, or a long KV prefill, holds the model for tens of
seconds; behind it, every small request would wait that long. So the batcher runs large
requests in a lane of their own, and the two lanes take turns at the model: a large request
runs until its next checkpoint (between model batches: one slice), then, if a small batch
is waiting, that batch runs whole, then the large request's next slice, and so on. A small
request waits at most one slice and one batch ahead of it, not its neighbour's whole run;
the large request keeps making progress, one slice per small batch.

Only one thread computes at a time, so the lanes never compete for the cores.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Literal

from ctxcomp.cancellation import yielding

Lane = Literal["small", "large"]


class SharedWorker:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False
        self._waiting: dict[Lane, int] = {"small": 0, "large": 0}
        self._last: Lane = "large"  # who ran last: when both wait, the other goes
        self.slices = 0  # times a large request gave way to a small batch (tests, metrics)

    def _may_run(self, lane: Lane) -> bool:
        other: Lane = "large" if lane == "small" else "small"
        return not self._busy and (not self._waiting[other] or self._last == other)

    def _acquire(self, lane: Lane) -> None:
        with self._changed:
            self._waiting[lane] += 1
            self._changed.wait_for(lambda: self._may_run(lane))
            self._waiting[lane] -= 1
            self._busy = True

    def _release(self, lane: Lane) -> None:
        with self._changed:
            self._busy, self._last = False, lane
            self._changed.notify_all()

    @contextmanager
    def turn(self, lane: Lane) -> Iterator[None]:
        """Hold the model for one small batch, or for a large request that gives way at each
        checkpoint while a small batch waits."""
        self._acquire(lane)
        try:
            if lane == "large":
                with yielding(self._give_way):
                    yield
            else:
                yield
        finally:
            self._release(lane)

    def _give_way(self) -> None:
        with self._changed:
            if not self._waiting["small"]:
                return
            self.slices += 1
        self._release("large")
        self._acquire("large")
