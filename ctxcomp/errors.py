"""Domain errors. The gRPC layer maps each class to one status code (ctxcomp/service/errors.py)."""

from __future__ import annotations

import difflib
from typing import Iterable


class CtxcompError(Exception):
    """Base class of every error ctxcomp raises on purpose."""


# How much of a client's value an error message repeats: enough to recognise it, never so much
# that the status message outgrows gRPC's metadata limit (8 KB by default) and the client
# gets RESOURCE_EXHAUSTED instead of the error.
ECHO_CHARS = 64
FIELD_CHARS = 200


def quoted(value: object, limit: int = ECHO_CHARS) -> str:
    """repr() of a client's value for an error message, cut to `limit` characters with its length."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(shown)} characters as written"
    return f"{shown[:limit]}... ({size})"


def did_you_mean(value: str, valid: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the valid name closest to a misspelt one, or "" when none is close."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.75) if len(value) <= ECHO_CHARS else []
    return f" (did you mean {close[0]!r}?)" if close else ""


class InvalidRequest(CtxcompError):
    """The request is malformed; `field` names the offending field (proto path), cut to
    FIELD_CHARS when a client-chosen name (an option key, say) makes it long."""

    def __init__(self, field: str, message: str) -> None:
        if len(field) > FIELD_CHARS:
            field = f"{field[:FIELD_CHARS]}..."
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def split_field(text: str) -> tuple[str, str]:
    """(field, message) of an InvalidRequest's text ("field: message"), as a status detail carries it."""
    field, _, message = text.partition(": ")
    return field, message


class ModelUnavailable(CtxcompError):
    """A model role could not be loaded from any of the sources tried."""

    def __init__(self, role: str, tried: list[str], hint: str) -> None:
        lines = [f"model role '{role}' could not be loaded."]
        lines += [f"  tried: {t}" for t in tried]
        lines.append(f"  to provide it: {hint}")
        super().__init__("\n".join(lines))
        self.role = role
        self.tried = tried
        self.hint = hint


class NotAvailable(CtxcompError):
    """A feature was asked for that this server does not provide (yet)."""


class Overloaded(CtxcompError):
    """The server's queue is full, or the request would not be served before its deadline;
    the client should back off and retry."""


class Unavailable(CtxcompError):
    """Something the request needs cannot be reached now; the client should retry (later, or elsewhere)."""


class ShuttingDown(Unavailable):
    """The server is stopping and its grace period is over; the client should retry elsewhere."""


class Unauthenticated(CtxcompError):
    """The server refused the call's credentials (a bearer token, with auth on)."""


class DeadlineExceeded(CtxcompError):
    """The call's deadline passed before the server answered."""


class StoreUnavailable(Unavailable):
    """The KV store cannot be reached now (down, frozen, full); the client should retry.
    `key`: the one blob the failure concerns, or None when it is the store's own."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
