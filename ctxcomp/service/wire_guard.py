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
        problem = options_problem(data)
        if problem:
            return InvalidRequest("options", problem)
        return InvalidRequest("request", f"malformed CompressRequest message ({err})")


def parse_list_methods_request(data: bytes) -> pb.ListMethodsRequest | InvalidRequest:
    """The parsed request, or the InvalidRequest to answer with (never raises)."""
    try:
        return pb.ListMethodsRequest.FromString(data)
    except DecodeError:
        return InvalidRequest("request", "malformed ListMethodsRequest message")


# protobuf refuses messages nested deeper than this (CompressRequest, Struct, map entry,
# Value, Struct, ...): about 32 levels of objects in the options.
MAX_MESSAGE_DEPTH = 100
TOO_DEEP = f"nested too deeply (protobuf allows {MAX_MESSAGE_DEPTH} message levels: about 32 levels of objects)"


def options_problem(data: bytes) -> str | None:
    """Why a CompressRequest's options do not parse (invalid UTF-8, or nested too deeply), if they are the cause."""
    try:
        for number, wire_type, value in _fields(data):
            if number == 6 and wire_type == _LENGTH_DELIMITED:
                problem = _struct_problem(value, depth=2)
                if problem:
                    return problem
    except ValueError:
        return None
    return None


def _struct_problem(data: bytes, depth: int) -> str | None:
    """Struct { map<string, Value> fields = 1 } at message depth `depth`."""
    if depth > MAX_MESSAGE_DEPTH:
        return TOO_DEEP
    for number, wire_type, entry in _fields(data):
        if number != 1 or wire_type != _LENGTH_DELIMITED:
            continue
        for part_number, part_type, part in _fields(entry):
            if part_type != _LENGTH_DELIMITED:
                continue
            problem = "not valid UTF-8 (a key)" if part_number == 1 and not _utf8(part) else None
            problem = problem or (_value_problem(part, depth + 2) if part_number == 2 else None)
            if problem:
                return problem
    return None


def _value_problem(data: bytes, depth: int) -> str | None:
    """Value { string_value = 3; Struct struct_value = 5; ListValue list_value = 6 } at `depth`."""
    if depth > MAX_MESSAGE_DEPTH:
        return TOO_DEEP
    for number, wire_type, part in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number == 3 and not _utf8(part):
            return "not valid UTF-8 (a value)"
        if number == 5:
            problem = _struct_problem(part, depth + 1)
            if problem:
                return problem
        if number == 6:  # ListValue { repeated Value values = 1 }
            for item_number, item_type, item in _fields(part):
                problem = _value_problem(item, depth + 2) if item_number == 1 and item_type == _LENGTH_DELIMITED else None
                if problem:
                    return problem
    return None


def invalid_utf8_field(data: bytes) -> str | None:
    """Proto path of the first string field of a CompressRequest holding invalid UTF-8
    (the options, a Struct, are options_problem's)."""
    document = message = -1
    for number, wire_type, value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number in (1, 3) and not _utf8(value):
            return "query" if number == 1 else "method"
        if number == 2:
            document += 1
            found = _document_field(value, document)
            if found:
                return found
        if number == 14:
            message += 1
            for part_number, part_type, part in _fields(value):
                if part_type == _LENGTH_DELIMITED and part_number in (1, 2) and not _utf8(part):
                    return f"messages[{message}].{'role' if part_number == 1 else 'content'}"
    return None


def _document_field(data: bytes, index: int) -> str | None:
    for number, wire_type, value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number in (1, 2, 4) and not _utf8(value):
            return f"documents[{index}].{ {1: 'id', 2: 'text', 4: 'format'}[number]}"
        if number == 3:
            for entry_number, _, entry in _fields(value):
                if not _utf8(entry):
                    return f"documents[{index}].metadata" + (" (a key)" if entry_number == 1 else " (a value)")
    return None


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
