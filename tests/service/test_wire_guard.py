"""Malformed request bytes come back as an InvalidRequest naming the field, found through the
proto's descriptor: every string field, nested ones and map keys and values included."""

from __future__ import annotations

import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.service.wire_guard import parse_compress_request
from ctxcomp.v1 import ctxcomp_pb2 as pb

MARK = "MARKMARK"


def with_invalid_utf8(message: pb.CompressRequest) -> bytes:
    """The message's bytes with MARK (in one string) turned into invalid UTF-8 of the same length."""
    data = message.SerializeToString()
    assert data.count(MARK.encode()) == 1
    return data.replace(MARK.encode(), b"\xff" * len(MARK))


def document(text: str = "text", **metadata: str) -> pb.Document:
    return pb.Document(id="d", text=text, metadata=metadata)


@pytest.mark.parametrize(("message", "field"), [
    (pb.CompressRequest(query=MARK), "query"),
    (pb.CompressRequest(query="q", kv_codec=MARK), "kv_codec"),
    (pb.CompressRequest(query="q", llm=MARK), "llm"),
    (pb.CompressRequest(query="q", cache_salt=MARK), "cache_salt"),
    (pb.CompressRequest(query="q", documents=[document(), document(MARK)]), "documents[1].text"),
    (pb.CompressRequest(query="q", documents=[document(url=MARK)]), "documents[0].metadata (a value)"),
    (pb.CompressRequest(query="q", documents=[document(**{MARK: "x"})]), "documents[0].metadata (a key)"),
    (pb.CompressRequest(query="q", messages=[pb.Message(role="user", content="a"), pb.Message(role="user", content=MARK)]),
     "messages[1].content"),
])
def test_invalid_utf8_is_named_by_its_field(message, field) -> None:
    parsed = parse_compress_request(with_invalid_utf8(message))
    assert isinstance(parsed, InvalidRequest)
    assert (parsed.field, parsed.message) == (field, "not valid UTF-8")


def test_valid_bytes_parse() -> None:
    message = pb.CompressRequest(query="q", documents=[document(url="u")], llm="x")
    assert parse_compress_request(message.SerializeToString()) == message
