"""Cooperative cancellation of model work.

A batch of requests runs in a worker thread and cannot be interrupted from
outside. Instead, whoever runs it says how to tell that the work is no longer
wanted (`cancellable`), and the model loops call `checkpoint()` between model
batches (encoder windows, embedding chunks, prefill layers). So abandoned work
stops within about one model batch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ctxcomp.errors import CtxcompError

_watch = threading.local()


class Cancelled(CtxcompError):
    """The work running on this thread was abandoned (a caller cancelled or its deadline passed)."""


@contextmanager
def cancellable(abandoned: Callable[[], bool]) -> Iterator[None]:
    """While inside, `checkpoint()` on this thread raises Cancelled once `abandoned()` is true."""
    outer = getattr(_watch, "abandoned", None)
    _watch.abandoned = abandoned
    try:
        yield
    finally:
        _watch.abandoned = outer


def checkpoint() -> None:
    """Raise Cancelled if the work on this thread is no longer wanted; call between model batches."""
    abandoned = getattr(_watch, "abandoned", None)
    if abandoned is not None and abandoned():
        raise Cancelled("the work was abandoned: its request was cancelled or its deadline passed")
