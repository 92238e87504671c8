"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import logging

import grpc

from ctxcomp.errors import (
    CtxcompError, InvalidRequest, ModelUnavailable, NotAvailable, Overloaded, ShuttingDown, StoreUnavailable,
)

log = logging.getLogger("ctxcomp.service")
# gRPC carries the status message in trailing metadata (8 KB by default): a longer one would
# reach the client as RESOURCE_EXHAUSTED instead of our status. Messages quote client values
# cut short (ctxcomp.errors.quoted); this is the net under any that is not.
MAX_MESSAGE_CHARS = 2000

STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (NotAvailable, grpc.StatusCode.UNIMPLEMENTED),
    (ModelUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: Exception) -> tuple[grpc.StatusCode, str]:
    """Status code and client-facing message; unexpected errors become INTERNAL without internals."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, _bounded(str(error))
    if isinstance(error, CtxcompError):
        return grpc.StatusCode.FAILED_PRECONDITION, _bounded(str(error))
    log.exception("unexpected error while serving a request", exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); see server log"


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else f"{message[:MAX_MESSAGE_CHARS]}... (message cut)"
