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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence

from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.types import CompressRequest, DocumentResult

# name -> "module:Class", imported only when first used.
REGISTRY: dict[str, str] = {
    "llmlingua2": "ctxcomp.methods.llmlingua2:LLMLingua2",
    "exit": "ctxcomp.methods.exit:Exit",
    "recomp_extractive": "ctxcomp.methods.recomp_extractive:RecompExtractive",
    "recomp_abstractive": "ctxcomp.methods.recomp_abstractive:RecompAbstractive",
    "mig": "ctxcomp.methods.mig:MigSelection",
    "xrag": "ctxcomp.methods.xrag:Xrag",
    "comi": "ctxcomp.methods.comi:ComiMerge",
}
DEFAULT_METHOD = "llmlingua2"
CHAIN_SEPARATOR = ">"  # "exit>llmlingua2": EXIT first, LLMLingua-2 on what it kept


@dataclass(frozen=True)
class SelectiveOptions:
    """Options every method config carries: selective augmentation (RECOMP).

    With `selective`, a request whose documents all score below the relevance
    threshold returns an empty context and a note saying why, instead of
    compressed noise. Checked before the method runs (ctxcomp.relevance).
    """

    selective: bool = field(
        default=False, metadata={"help": "return an empty context when no document is relevant to the query"}
    )
    relevance_threshold: float = field(
        default=-1.0,
        metadata={"help": "selective: best-sentence relevance below which a request is off-topic (-1 = calibrated)"},
    )


@dataclass(frozen=True)
class MethodOutput:
    """Per-document results in request order, and a note (e.g. why nothing was kept)."""

    documents: tuple[DocumentResult, ...]
    note: str = ""
    soft: Any = None  # ctxcomp.soft.SoftTokens for methods whose output is vectors (xrag, comi)


class Method(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    config_type: ClassVar[type]
    requires: ClassVar[tuple[str, ...]]  # model roles
    needs_query: ClassVar[bool]  # refuse requests with an empty query

    def __init__(self, hub: ModelHub) -> None: ...

    def compress(self, request: CompressRequest, config: Any, tokens_before: Sequence[int]) -> MethodOutput:
        """Compress request.documents; tokens_before holds their downstream-LLM token counts."""
        ...


def token_budget(request: CompressRequest, preset_rate: float, tokens_before: Sequence[int]) -> int:
    """The request's budget in downstream-LLM tokens over all documents: target_tokens,
    else its rate, else the method preset's rate, times the input's tokens."""
    total = int(sum(tokens_before))
    if request.target_tokens is not None:
        return min(request.target_tokens, total)
    rate = request.rate if request.rate is not None else preset_rate
    return int(total * rate)


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


def apply_options(config: Any, options: Mapping[str, Any], prefix: str = "options") -> Any:
    """A copy of a frozen config with request options applied, each checked by type.

    Raises InvalidRequest naming `<prefix>.<name>` for an unknown name or a bad value.
    """
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name, value in options.items():
        if name not in known:
            raise InvalidRequest(f"{prefix}.{name}", f"unknown option; valid options: {', '.join(sorted(known))}")
        changes[name] = _coerce(f"{prefix}.{name}", hints[name], value)
    updated = dataclasses.replace(config, **changes)
    check = getattr(updated, "check", None)
    if check is not None:
        try:
            check()
        except InvalidRequest as err:  # checks name "options.<name>"; a chain stage nests deeper
            raise InvalidRequest(err.field.replace("options", prefix, 1), err.message) from None
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
