"""Compression methods: one module each, one small interface, found by name.

Shared code never branches on a method's name: it asks the registry for the
class and talks to it through `Method`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, Sequence

from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.types import CompressRequest, DocumentResult

# name -> "module:Class", imported only when first used.
REGISTRY: dict[str, str] = {
    "llmlingua2": "ctxcomp.methods.llmlingua2:LLMLingua2",
}
DEFAULT_METHOD = "llmlingua2"


@dataclass(frozen=True)
class MethodOutput:
    """Per-document results in request order, and a note (e.g. why nothing was kept)."""

    documents: tuple[DocumentResult, ...]
    note: str = ""


class Method(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    config_type: ClassVar[type]
    requires: ClassVar[tuple[str, ...]]  # model roles

    def __init__(self, hub: ModelHub) -> None: ...

    def compress(self, request: CompressRequest, config: Any, tokens_before: Sequence[int]) -> MethodOutput:
        """Compress request.documents; tokens_before holds their downstream-LLM token counts."""
        ...


def method_names() -> list[str]:
    return sorted(REGISTRY)


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise InvalidRequest("method", f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


# --- options ------------------------------------------------------------------


def describe_options(config: Any) -> list[dict[str, str]]:
    """Name, type, preset (JSON) and help of every field of a method config."""
    hints = typing.get_type_hints(type(config))
    return [
        {
            "name": f.name,
            "type": _type_name(hints[f.name]),
            "default_json": json.dumps(getattr(config, f.name)),
            "help": f.metadata.get("help", ""),
        }
        for f in dataclasses.fields(config)
    ]


def apply_options(config: Any, options: Mapping[str, Any]) -> Any:
    """A copy of a frozen config with request options applied, each checked by type.

    Raises InvalidRequest naming `options.<name>` for an unknown name or a bad value.
    """
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name, value in options.items():
        if name not in known:
            raise InvalidRequest(f"options.{name}", f"unknown option; valid options: {', '.join(sorted(known))}")
        changes[name] = _coerce(f"options.{name}", hints[name], value)
    updated = dataclasses.replace(config, **changes)
    check = getattr(updated, "check", None)
    if check is not None:
        check()
    return updated


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(field: str, hint: Any, value: Any) -> Any:
    """Convert a JSON-ish value (protobuf Struct numbers are floats) to the field's type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(field, inner[0], value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            raise InvalidRequest(field, f"must be one of {allowed}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(field, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(field, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(field, f"must be an integer, got {value!r}")
        if float(value) != int(value) or abs(value) > 2**53:
            raise InvalidRequest(field, f"must be an integer of at most 2**53, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidRequest(field, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidRequest(field, f"must be a string, got {value!r}")
        return value
    raise InvalidRequest(field, f"cannot be set from a request (type {_type_name(hint)})")
