"""Cooperative cancellation of model work.

A batch of requests runs in a worker thread and cannot be interrupted from
outside. Instead, whoever runs it says how to tell that the work is no longer
wanted (`cancellable`), and the model loops call `checkpoint()` between model
batches (encoder windows, embedding chunks, prefill layers). So abandoned work
stops within about one model batch.

The same checkpoints are where long work gives way (`yielding`): a server runs a large
request in slices between them, and lets waiting small batches run in between.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

from ctxcomp.errors import CtxcompError

_watch = threading.local()


class Cancelled(CtxcompError):
    """The work running on this thread was abandoned (a caller cancelled or its deadline passed)."""


@contextmanager
def _watching(name: str, value: Callable) -> Iterator[None]:
    """`value` as this thread's `name` while inside (the outer one again after)."""
    outer = getattr(_watch, name, None)
    setattr(_watch, name, value)
    try:
        yield
    finally:
        setattr(_watch, name, outer)


def cancellable(abandoned: Callable[[], bool]) -> ContextManager[None]:
    """While inside, `checkpoint()` on this thread raises Cancelled once `abandoned()` is true."""
    return _watching("abandoned", abandoned)


def yielding(give_way: Callable[[], None]) -> ContextManager[None]:
    """While inside, `checkpoint()` on this thread calls `give_way()`, which may block while
    other work runs (see ctxcomp.service.worker)."""
    return _watching("give_way", give_way)


def in_slices() -> bool:
    """Whether the work on this thread runs in slices (a large request, see `yielding`): its
    model loops then take smaller batches (a quarter of the usual encoder tokens), so that each
    slice, and a small request's wait, is short."""
    return getattr(_watch, "give_way", None) is not None


def checkpoint() -> None:
    """Raise Cancelled if the work on this thread is no longer wanted, else give way to waiting
    work if asked to; call between model batches."""
    abandoned = getattr(_watch, "abandoned", None)
    if abandoned is not None and abandoned():
        raise Cancelled("the work was abandoned: its request was cancelled or its deadline passed")
    give_way = getattr(_watch, "give_way", None)
    if give_way is not None:
        give_way()
