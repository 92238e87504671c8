"""The shared model worker on its own: slices of a large run, small batches in between.
Through a server, with real models: tests/service/test_faults.py."""

from __future__ import annotations

import threading
import time

from ctxcomp.cancellation import checkpoint
from ctxcomp.service.worker import SharedWorker

SLICE_S = 0.05


def run_large(worker: SharedWorker, log: list[str], slices: int) -> threading.Thread:
    def large() -> None:
        with worker.turn("large"):
            for i in range(slices):
                log.append(f"L{i}")
                time.sleep(SLICE_S)  # one model batch
                checkpoint()

    thread = threading.Thread(target=large)
    thread.start()
    return thread


def test_a_waiting_small_batch_runs_at_the_large_runs_next_checkpoint() -> None:
    worker, log = SharedWorker(), []
    large = run_large(worker, log, slices=6)
    time.sleep(SLICE_S / 2)
    started = time.monotonic()
    with worker.turn("small"):
        waited = time.monotonic() - started
        log.append("S")
    large.join(timeout=5)
    assert waited < 2 * SLICE_S, waited  # one slice at most, not the whole large run
    assert log[:3] == ["L0", "S", "L1"] and log[-1] == "L5"
    assert worker.slices == 1


def test_small_batches_back_to_back_still_leave_the_large_run_a_slice_each() -> None:
    """Small work that never stops does not starve the large run: the turns alternate."""
    worker, log = SharedWorker(), []
    large = run_large(worker, log, slices=4)
    time.sleep(SLICE_S / 2)
    for i in range(3):
        with worker.turn("small"):
            log.append(f"S{i}")
    large.join(timeout=5)
    assert log == ["L0", "S0", "L1", "S1", "L2", "S2", "L3"]


def test_without_small_work_the_large_run_never_waits() -> None:
    worker, log = SharedWorker(), []
    started = time.monotonic()
    run_large(worker, log, slices=4).join(timeout=5)
    assert time.monotonic() - started < 4 * SLICE_S + 0.1
    assert worker.slices == 0


def test_a_large_run_waits_for_the_small_batch_that_holds_the_worker() -> None:
    worker, log = SharedWorker(), []
    with worker.turn("small"):
        large = run_large(worker, log, slices=1)
        time.sleep(SLICE_S)
        log.append("S")
    large.join(timeout=5)
    assert log == ["S", "L0"]
