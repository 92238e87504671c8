"""The HTTP API's OpenAPI document, generated from the proto's descriptors (one schema).

Schemas follow the proto3 JSON mapping that the gateway speaks (ctxcomp.service.http_gateway):
field names as in the .proto, 64-bit integers as strings, bytes as base64, enums by name,
maps as objects. `python -m ctxcomp.service.openapi` prints it; docs/openapi.json is its
committed copy (a test keeps the two equal).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ctxcomp.v1 import ctxcomp_pb2 as pb

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "integer", "description": "the HTTP status"},
        "status": {"type": "string", "description": "the gRPC status name (INVALID_ARGUMENT, ...)"},
        "field": {"type": "string", "description": "INVALID_ARGUMENT only: the request field at fault"},
        "message": {"type": "string"},
    }, "required": ["code", "status", "message"]}},
}


def field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": field_schema(field.message_type.fields_by_name["value"], schemas)}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        one = {"$ref": f"#/components/schemas/{message_schema(field.message_type, schemas)}"}
    elif field.type == FieldDescriptor.TYPE_ENUM:
        one = {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    else:
        one = dict(_SCALARS[field.type])
    return {"type": "array", "items": one} if field.is_repeated else one


def message_schema(message: Descriptor, schemas: dict[str, Any]) -> str:
    """Adds the message's schema (and those it refers to) under its name; returns the name."""
    name = message.name
    if name not in schemas:
        schemas[name] = {}  # placed first: a message may refer to itself
        schemas[name] = {
            "type": "object",
            "properties": {f.name: field_schema(f, schemas) for f in message.fields},
        }
    return name


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}

    def ref(message: Descriptor) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{message_schema(message, schemas)}"}

    def answers(message: Descriptor, what: str) -> dict[str, Any]:
        return {
            "200": {"description": what, "content": {"application/json": {"schema": ref(message)}}},
            "default": {"description": "an error: the gRPC status as HTTP, with the same message",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        }

    paths = {
        "/v1/compress": {"post": {
            "operationId": "Compress",
            "summary": "Compress the documents for the query (gRPC Compressor.Compress)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(pb.CompressRequest.DESCRIPTOR)}}},
            "responses": answers(pb.CompressResponse.DESCRIPTOR, "the compressed context"),
        }},
        "/v1/methods": {"get": {
            "operationId": "ListMethods",
            "summary": "Methods with their options, the loaded models and the server's limits (gRPC Compressor.ListMethods)",
            "responses": answers(pb.ListMethodsResponse.DESCRIPTOR, "what this server offers"),
        }},
        "/healthz": {"get": {
            "operationId": "Health",
            "summary": "200 once every preloaded model is loaded and warm, 503 before",
            "responses": {code: {"description": status, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]}}}}}}
                for code, status in (("200", "SERVING"), ("503", "NOT_SERVING"))},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ctxcomp", "version": "v1",
                 "description": "Context compression for RAG over HTTP/JSON: the gRPC service ctxcomp.v1.Compressor, "
                                "transcoded (proto3 JSON mapping). Streamed KV blobs are gRPC-only."},
        "components": {"schemas": dict(sorted(schemas.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=1))
