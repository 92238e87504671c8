"""How torch uses the CPU: intra-op threads from the cores this process may run on and
the number of model workers sharing them (chosen at start-up and logged), and OpenMP
threads that sleep instead of spinning while they wait.

torch's default (every core the machine has) oversubscribes a container limited by
a CPU quota, or a server with several workers. And OpenMP threads spin at every
barrier by default: with a competing process on the same cores, a spinning thread
takes the CPU from the one its team waits for (bench/load.py, the threads phase;
on 2 cores EXIT over 32 records took 3.5 s with 2 spinning threads against a busy
neighbour, 1.7 s with passive waits, and the same 0.9-1.1 s either way when quiet).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


PASSIVE_SWITCH = "CTXCOMP_OMP_PASSIVE"  # "0" keeps OpenMP's own wait policy (for comparisons)


def prefer_passive_waits() -> bool:
    """Ask OpenMP for sleeping waits (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy.
    OpenMP reads it when torch loads, so this runs first thing in `import ctxcomp`; it
    changes nothing if torch is already loaded. Returns whether passive waits are asked for."""
    import sys

    if "torch" not in sys.modules and os.environ.get(PASSIVE_SWITCH, "1") != "0":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


@dataclass(frozen=True)
class ThreadPlan:
    cores: int  # cores this process may use: CPU affinity, capped by a cgroup CPU quota
    workers: int
    threads: int  # intra-op threads per worker
    reason: str

    def describe(self) -> str:
        waits = os.environ.get("OMP_WAIT_POLICY", "OpenMP default")
        return (
            f"torch intra-op threads: {self.threads} per worker ({self.reason}; {self.cores} cores, "
            f"{self.workers} workers); OpenMP waits: {waits}"
        )


def available_cores() -> int:
    """CPUs in this process's affinity mask, capped by a cgroup v2 or v1 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.floor(quota))) if quota else cores


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError):
        return None


def plan_threads(workers: int, requested: int | None = None, cores: int | None = None) -> ThreadPlan:
    """`requested` threads per worker if given, else the available cores split between workers."""
    cores = cores or available_cores()
    if requested:
        return ThreadPlan(cores, workers, requested, "as configured")
    return ThreadPlan(cores, workers, max(1, cores // max(1, workers)), "cores / workers")


def apply(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads, only when they change (see ctxcomp/models/kv_transform.py for a
    batched-LAPACK deadlock that an explicit set_num_threads can provoke)."""
    import torch

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)


def on_cores(work: Callable[[int], T], count: int) -> list[T]:
    """work(i) for i < count on as many threads as this process has cores: for kernels that drop the
    GIL (numba's nogil), such as the KV codecs' entropy coders."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(available_cores(), count)
    if workers <= 1:
        return [work(index) for index in range(count)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, range(count)))
