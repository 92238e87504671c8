"""Translation between the protobuf messages and ctxcomp's dataclasses.

Used by both sides: the service (request in, result out) and the client
(request out, result in). No logic beyond field mapping lives here.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2

from ctxcomp.types import (
    CompressRequest, CompressResult, Document, DocumentResult, Message, MessageResult, Span, WordLabel, field_default,
    request_fields,
)
from ctxcomp.v1 import ctxcomp_pb2 as pb

if TYPE_CHECKING:  # soft tokens are torch tensors: torch loads only when a message carries some
    from ctxcomp.soft import SoftTokens


# Fields with a shape of their own; every other CompressRequest field is a proto scalar of the
# same name, copied by `_scalar_to_proto` / `_scalar_from_proto`.
_STRUCTURED = ("documents", "options", "messages")


def request_to_proto(request: CompressRequest) -> pb.CompressRequest:
    message = pb.CompressRequest(
        documents=[
            pb.Document(id=d.id, text=d.text, metadata=dict(d.metadata), format="" if d.format == "text" else d.format)
            for d in request.documents
        ],
        messages=[pb.Message(role=m.role, content=m.content) for m in request.messages],
    )
    if request.options:
        message.options.update(dict(request.options))
    for spec_field, spec in request_fields():
        if spec.on_wire and spec_field.name not in _STRUCTURED:
            _scalar_to_proto(message, spec_field, getattr(request, spec_field.name))
    return message


def request_from_proto(message: pb.CompressRequest) -> CompressRequest:
    scalars = {
        spec_field.name: _scalar_from_proto(message, spec_field)
        for spec_field, spec in request_fields() if spec.on_wire and spec_field.name not in _STRUCTURED
    }
    return CompressRequest(
        documents=tuple(Document(d.id, d.text, dict(d.metadata), d.format or "text") for d in message.documents),
        options=_struct_to_dict(message.options),
        messages=tuple(Message(m.role, m.content) for m in message.messages),
        **scalars,
    )


def _scalar_to_proto(message: pb.CompressRequest, spec_field: Field, value: Any) -> None:
    """Write a value unless it is the field's default, which an unset proto field means."""
    if value is not None and value != field_default(spec_field):
        setattr(message, spec_field.name, value)


def _scalar_from_proto(message: pb.CompressRequest, spec_field: Field) -> Any:
    """The proto value, or the field's default where it is unset: a field with presence (in a
    oneof, or `optional`) not set, or a plain proto3 scalar at its zero value. A field whose
    default is not the zero value and whose zero value means something is `optional` in the
    proto (verbatim_turns = 0)."""
    name = spec_field.name
    if pb.CompressRequest.DESCRIPTOR.fields_by_name[name].has_presence:
        return getattr(message, name) if message.HasField(name) else field_default(spec_field)
    value, default = getattr(message, name), field_default(spec_field)
    return value if value or default is MISSING else default


def _struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct to plain Python, keeping every number (json_format refuses NaN and infinities;
    the method options then reject them by name)."""
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def result_to_proto(result: CompressResult, tokenizer: str = "") -> pb.CompressResponse:
    return pb.CompressResponse(
        method=result.method,
        documents=[_document_to_proto(d) for d in result.documents],
        context=result.context,
        tokens_before=result.tokens_before,
        tokens_after=result.tokens_after,
        ratio=result.ratio if math.isfinite(result.ratio) else 0.0,
        rate=result.rate,
        timings_ms=dict(result.timings_ms),
        note=result.note,
        tokenizer=tokenizer,
        kv_keys=list(result.kv_keys),
        kv_bytes=result.kv.size if result.kv is not None and result.kv.data is not None else 0,
        soft_tokens=_soft_to_proto(result.soft) if result.soft is not None else None,
        messages=[
            pb.MessageResult(role=m.role, text=m.text, kept_spans=[pb.Span(start=s.start, end=s.end) for s in m.kept_spans],
                             tokens_before=m.tokens_before, tokens_after=m.tokens_after, verbatim=m.verbatim)
            for m in result.messages
        ],
        prompt=result.prompt,
    )


def _soft_from_proto(message: pb.SoftTokens) -> SoftTokens:
    from ctxcomp.soft import decode as decode_soft

    return decode_soft(message.safetensors)


def _soft_to_proto(soft: SoftTokens) -> pb.SoftTokens:
    from ctxcomp.soft import encode as encode_soft

    return pb.SoftTokens(
        kind=soft.kind,
        safetensors=encode_soft(soft),
        shape=list(soft.vectors.shape),
        dtype=str(soft.vectors.dtype).removeprefix("torch."),
        model_fingerprint=soft.model_fingerprint,
        document_ids=list(soft.document_ids),
    )


def _document_to_proto(doc: DocumentResult) -> pb.DocumentResult:
    return pb.DocumentResult(
        id=doc.id,
        text=doc.text,
        kept_spans=[pb.Span(start=s.start, end=s.end) for s in doc.kept_spans],
        tokens_before=doc.tokens_before,
        tokens_after=doc.tokens_after,
        score=doc.score,
        metadata=dict(doc.metadata),
        word_labels=[pb.WordLabel(start=w.start, end=w.end, score=w.score, kept=w.kept) for w in doc.word_labels],
        method_score=doc.method_score,
    )


def result_from_proto(message: pb.CompressResponse) -> CompressResult:
    return CompressResult(
        method=message.method,
        documents=tuple(
            DocumentResult(
                id=d.id,
                text=d.text,
                kept_spans=tuple(Span(s.start, s.end) for s in d.kept_spans),
                tokens_before=d.tokens_before,
                tokens_after=d.tokens_after,
                score=d.score,
                metadata=dict(d.metadata),
                word_labels=tuple(WordLabel(w.start, w.end, w.score, w.kept) for w in d.word_labels),
                method_score=d.method_score,
            )
            for d in message.documents
        ),
        context=message.context,
        tokens_before=message.tokens_before,
        tokens_after=message.tokens_after,
        timings_ms=dict(message.timings_ms),
        note=message.note,
        kv_keys=tuple(message.kv_keys),
        soft=_soft_from_proto(message.soft_tokens) if message.HasField("soft_tokens") else None,
        messages=tuple(
            MessageResult(m.role, m.text, tuple(Span(s.start, s.end) for s in m.kept_spans), m.tokens_before,
                          m.tokens_after, m.verbatim)
            for m in message.messages
        ),
        prompt=message.prompt,
    )


def result_to_dict(result: CompressResult) -> dict[str, Any]:
    """JSON-ready form (CLI --json): ratio/rate as floats, no formatted strings."""
    return {
        "method": result.method,
        "context": result.context,
        "tokens_before": result.tokens_before,
        "tokens_after": result.tokens_after,
        "ratio": result.ratio if math.isfinite(result.ratio) else None,
        "rate": result.rate,
        "timings_ms": dict(result.timings_ms),
        "note": result.note,
        "kv_keys": list(result.kv_keys),
        "documents": [
            {
                "id": d.id,
                "text": d.text,
                "kept_spans": [[s.start, s.end] for s in d.kept_spans],
                "tokens_before": d.tokens_before,
                "tokens_after": d.tokens_after,
                "score": d.score,
                "metadata": dict(d.metadata),
                **({"word_labels": [[w.start, w.end, w.score, w.kept] for w in d.word_labels]} if d.word_labels else {}),
            }
            for d in result.documents
        ],
        **({"messages": [
            {"role": m.role, "text": m.text, "tokens_before": m.tokens_before, "tokens_after": m.tokens_after,
             "verbatim": m.verbatim}
            for m in result.messages
        ]} if result.messages else {}),
    }
