"""Request parsing that turns malformed bytes into a field-named error.

grpc would answer a request that fails to parse (invalid UTF-8 in a string
field, say) with INTERNAL and no hint. We parse ourselves and, on failure,
walk the wire format to name the offending field.
"""

from __future__ import annotations

from typing import Iterator

from google.protobuf.message import DecodeError

from ctxcomp.errors import InvalidRequest
from ctxcomp.v1 import ctxcomp_pb2 as pb

_LENGTH_DELIMITED = 2


def parse_compress_request(data: bytes) -> pb.CompressRequest | InvalidRequest:
    """The parsed request, or the InvalidRequest to answer with (never raises)."""
    try:
        return pb.CompressRequest.FromString(data)
    except DecodeError as err:
        try:
            field = invalid_utf8_field(data)
        except ValueError:
            field = None
        if field:
            return InvalidRequest(field, "not valid UTF-8")
        return InvalidRequest("request", f"malformed CompressRequest message ({err})")


def invalid_utf8_field(data: bytes) -> str | None:
    """Proto path of the first string field of a CompressRequest holding invalid UTF-8."""
    document = -1
    for number, wire_type, value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number in (1, 3) and not _utf8(value):
            return "query" if number == 1 else "method"
        if number == 6 and not _struct_ok(value):
            return "options"
        if number == 2:
            document += 1
            found = _document_field(value, document)
            if found:
                return found
    return None


def _document_field(data: bytes, index: int) -> str | None:
    for number, wire_type, value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number in (1, 2) and not _utf8(value):
            return f"documents[{index}].{'id' if number == 1 else 'text'}"
        if number == 3:
            for entry_number, _, entry in _fields(value):
                if not _utf8(entry):
                    return f"documents[{index}].metadata" + (" (a key)" if entry_number == 1 else " (a value)")
    return None


def _struct_ok(data: bytes) -> bool:
    try:
        pb.CompressRequest.FromString(b"\x32" + _varint_bytes(len(data)) + data)
        return True
    except DecodeError:
        return False


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        result |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return result, i
        shift += 7


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, wire type, payload) of each field; raises ValueError on garbage."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, i = _varint(data, i)
            yield number, wire_type, b""
        elif wire_type == 1:
            i += 8
            yield number, wire_type, b""
        elif wire_type == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            yield number, wire_type, data[i : i + length]
            i += length
        elif wire_type == 5:
            i += 4
            yield number, wire_type, b""
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
