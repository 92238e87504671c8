"""ctxcomp: context compression for retrieval-augmented generation."""

from __future__ import annotations

from ctxcomp import threads as _threads

_threads.prefer_passive_waits()  # before anything loads torch (see ctxcomp.threads)

from ctxcomp.errors import CtxcompError, InvalidRequest, ModelUnavailable, NotAvailable  # noqa: E402
from ctxcomp.pipeline import Compressor, Limits  # noqa: E402
from ctxcomp.types import CompressRequest, CompressResult, Document, DocumentResult, Span, WordLabel  # noqa: E402

__version__ = "0.1.0"

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
