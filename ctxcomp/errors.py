"""Domain errors. The gRPC layer maps each class to one status code (ctxcomp/service/errors.py)."""

from __future__ import annotations


class CtxcompError(Exception):
    """Base class of every error ctxcomp raises on purpose."""


class InvalidRequest(CtxcompError):
    """The request is malformed; `field` names the offending field (proto path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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


class StoreUnavailable(CtxcompError):
    """The KV store cannot be reached now (down, frozen, full); the client should retry."""
