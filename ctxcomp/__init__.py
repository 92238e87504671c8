"""ctxcomp: context compression for retrieval-augmented generation."""

from __future__ import annotations

from ctxcomp.errors import CtxcompError, InvalidRequest, ModelUnavailable, NotAvailable
from ctxcomp.pipeline import Compressor, Limits
from ctxcomp.types import CompressRequest, CompressResult, Document, DocumentResult, Span, WordLabel

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
