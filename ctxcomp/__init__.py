"""ctxcomp: context compression for retrieval-augmented generation."""

from __future__ import annotations

from ctxcomp import threads as _threads

_threads.prefer_passive_waits()  # before anything loads torch (see ctxcomp.threads)

from typing import TYPE_CHECKING, Any  # noqa: E402

from ctxcomp.errors import CtxcompError, InvalidRequest, ModelUnavailable, NotAvailable  # noqa: E402
from ctxcomp.types import CompressRequest, CompressResult, Document, DocumentResult, Span, WordLabel  # noqa: E402

if TYPE_CHECKING:
    from ctxcomp.pipeline import Compressor, Limits

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Compressor and Limits load the pipeline (torch, transformers) on first use only, so that
    a client of a remote server (ctxcomp.client, the framework wrappers) never imports them."""
    if name in ("Compressor", "Limits"):
        from ctxcomp import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ctxcomp' has no attribute {name!r}")

__all__ = [
    "CompressRequest",
    "CompressResult",
    "Compressor",
    "CtxcompError",
    "Document",
    "DocumentResult",
    "InvalidRequest",
    "Limits",
    "ModelUnavailable",
    "NotAvailable",
    "Span",
    "WordLabel",
]
