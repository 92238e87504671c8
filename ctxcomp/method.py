"""What a compression method is: one protocol holding everything the pipeline uses.

Each method is one module under ctxcomp/methods/, found by name through the
registry there. The pipeline talks to a method only through `Method`: its
members say what it needs (`requires`, `needs_query`), what it returns
(`output`), how a request's options become its config (`configure`), whether
it can run here (`check`), and one batched entry point (`compress_many`) whose
items each carry their own request, config and token counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Protocol, Sequence, TypeVar

from ctxcomp.errors import InvalidRequest, did_you_mean, quoted
from ctxcomp.hub import ModelHub
from ctxcomp.types import CompressRequest, DocumentResult

if TYPE_CHECKING:
    from ctxcomp.relevance import DocumentScores
    from ctxcomp.soft import SoftTokens

Output = Literal["text", "vectors"]


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
        metadata={"help": "selective: document relevance below which a request is off-topic (-1 = calibrated)"},
    )


@dataclass(frozen=True)
class MethodItem:
    """One request as a method sees it: its own config and its documents' token counts."""

    request: CompressRequest
    config: Any  # the method's config with this request's options applied
    tokens_before: tuple[int, ...]  # downstream-LLM tokens per document
    # The relevance model's scores of the documents, when the pipeline's relevance stage made
    # them for this request (methods that read the relevance model use them, not a second pass).
    relevance: tuple[DocumentScores, ...] | None = None


@dataclass(frozen=True)
class MethodOutput:
    """Per-document results in request order, and a note (e.g. why nothing was kept)."""

    documents: tuple[DocumentResult, ...]
    note: str = ""
    soft: SoftTokens | None = None  # for methods whose output is vectors (xrag, comi)


class Method(Protocol):
    name: str
    description: str
    requires: tuple[str, ...]  # model roles
    needs_query: bool  # refuse requests with an empty query
    output: Output
    presets: Mapping[str, Any]  # named configs; "default" is what a request starts from

    def configure(self, options: Mapping[str, Any], prefix: str = "options") -> Any:
        """The default preset with a request's options applied; InvalidRequest names a bad one."""
        ...

    def check(self, hub: ModelHub) -> list[str]:
        """Why this method cannot run here (empty when it can)."""
        ...

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        """Compress several requests, each with its own config; results in item order."""
        ...


class MethodBase:
    """What most methods share: config from the default preset, the model check, and
    compress_many as one compress per item (methods that batch across requests override it)."""

    name: ClassVar[str]
    description: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    needs_query: ClassVar[bool]
    output: ClassVar[Output] = "text"
    presets: ClassVar[Mapping[str, Any]]

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def configure(self, options: Mapping[str, Any], prefix: str = "options") -> Any:
        return apply_options(self.presets["default"], options, prefix)

    def check(self, hub: ModelHub) -> list[str]:
        return hub.unavailable(self.requires)

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        return [self.compress(item) for item in items]

    def compress(self, item: MethodItem) -> MethodOutput:
        raise NotImplementedError


@functools.lru_cache(maxsize=None)
def field_types(config_type: type) -> dict[str, Any]:
    """The resolved field types of a config class (typing.get_type_hints, once per class:
    it re-evaluates every annotation, about 0.4 ms per request otherwise)."""
    return typing.get_type_hints(config_type)


def describe_options(config: object) -> list[dict[str, str]]:
    """Name, type, preset (JSON) and help of every field of a method config."""
    hints = field_types(type(config))
    return [
        {
            "name": f.name,
            "type": _type_name(hints[f.name]),
            "default_json": json.dumps(getattr(config, f.name)),
            "help": f.metadata.get("help", ""),
        }
        for f in dataclasses.fields(config)
    ]


def share(default: float, help: str) -> Any:
    """A config field holding a share of the input, in (0, 1]: its range is checked once, where
    options are applied, for every method."""
    return field(default=default, metadata={"help": help, "range": (0.0, 1.0, "(]")})


def check_ranges(config: object, prefix: str) -> None:
    """InvalidRequest naming the first field outside the "range" its metadata declares."""
    for f in dataclasses.fields(config):
        if "range" not in f.metadata:
            continue
        low, high, ends = f.metadata["range"]
        value = getattr(config, f.name)
        above = value > low if ends[0] == "(" else value >= low
        below = value < high if ends[1] == ")" else value <= high
        if not (above and below):
            raise InvalidRequest(f"{prefix}.{f.name}", f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {value}")


Config = TypeVar("Config")


def apply_options(config: Config, options: Mapping[str, Any], prefix: str = "options") -> Config:
    """A copy of a frozen config with request options applied, each checked by type and by the
    range its field declares (`share`), then by the config's own `check`.

    Raises InvalidRequest naming `<prefix>.<name>` for an unknown name or a bad value.
    """
    hints = field_types(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name, value in options.items():
        if name not in known:
            raise InvalidRequest(f"{prefix}.{name}", f"unknown option{did_you_mean(name, known)}; valid options: {', '.join(sorted(known))}")
        changes[name] = _coerce(f"{prefix}.{name}", hints[name], value)
    updated = dataclasses.replace(config, **changes)
    check_ranges(updated, prefix)
    check = getattr(updated, "check", None)
    if check is not None:
        try:
            check()
        except InvalidRequest as err:  # checks name "options.<name>"; a chain stage nests deeper
            raise InvalidRequest(err.field.replace("options", prefix, 1), err.message) from None
    return updated


def _type_name(hint: object) -> str:
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
            raise InvalidRequest(field, f"must be one of {allowed}, got {quoted(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(field, f"must be a list of strings, got {quoted(value)}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(field, f"must be true or false, got {quoted(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(field, f"must be an integer, got {quoted(value)}")
        if float(value) != int(value) or abs(value) > 2**53:
            raise InvalidRequest(field, f"must be an integer of at most 2**53, got {quoted(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidRequest(field, f"must be a number, got {quoted(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidRequest(field, f"must be a string, got {quoted(value)}")
        return value
    raise InvalidRequest(field, f"cannot be set from a request (type {_type_name(hint)})")
