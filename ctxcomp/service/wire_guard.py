"""Request parsing that turns malformed bytes into a field-named error.

grpc would answer a request that fails to parse (invalid UTF-8 in a string
field, say) with INTERNAL and no hint. We parse ourselves and, on failure,
walk the wire format to name the offending field.
"""

from __future__ import annotations

from typing import Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from ctxcomp.errors import InvalidRequest
from ctxcomp.v1 import ctxcomp_pb2 as pb

_LENGTH_DELIMITED = 2
_OPTIONS = pb.CompressRequest.DESCRIPTOR.fields_by_name["options"].number


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
            if number == _OPTIONS and wire_type == _LENGTH_DELIMITED:
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


def invalid_utf8_field(data: bytes, descriptor: Descriptor = pb.CompressRequest.DESCRIPTOR, path: str = "") -> str | None:
    """Proto path of the first string field holding invalid UTF-8 in a message of `descriptor`
    (a CompressRequest unless given), found through the descriptor, so a new string field is
    named as soon as the proto has it. The options, a Struct, are options_problem's."""
    seen: dict[int, int] = {}
    for number, wire_type, value in _fields(data):
        field = descriptor.fields_by_number.get(number)
        if wire_type != _LENGTH_DELIMITED or field is None:
            continue
        if descriptor.GetOptions().map_entry:
            name = f"{path} (a {field.name})"
        elif field.is_repeated and not _is_map(field):
            seen[number] = seen.get(number, -1) + 1
            name = f"{path}{field.name}[{seen[number]}]"
        else:
            name = path + field.name
        if field.type == FieldDescriptor.TYPE_STRING and not _utf8(value):
            return name
        if field.message_type is not None and field.message_type.full_name != "google.protobuf.Struct":
            found = invalid_utf8_field(value, field.message_type, name if _is_map(field) else name + ".")
            if found:
                return found
    return None


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


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
