"""Every field of CompressRequest reaches every way in: the proto, the wire in both directions,
the Python client, the CLI and the framework wrappers. A field added to the dataclass and
missing from any of them fails here, by name, instead of silently never being sent."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from ctxcomp import wire
from ctxcomp.client import build_request
from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document, Message, check_fields, request_fields
from ctxcomp.v1 import ctxcomp_pb2 as pb

FIELDS = {f.name for f in dataclasses.fields(CompressRequest)}
SPECS = {f.name: spec for f, spec in request_fields()}
SENT = {name for name, spec in SPECS.items() if spec.on_wire}
# What a framework wrapper sends with every request (the rest are the client's).
WRAPPER_FIELDS = {"method", "rate", "target_tokens", "options", "order", "html_output", "llm"}
RETRIEVER_FIELDS = {"method", "rate", "target_tokens", "options", "llm"}  # it ranks by score: no order

# One value per field, none the default: the round trip must keep each of them.
SAMPLE = {
    "query": "Why did the Vasa sink?",
    "documents": (Document("a", "The Vasa sank.", {"url": "u"}, "text"),),
    "method": "exit", "rate": 0.25, "options": {"top_k": 2, "nested": {"x": [1, "y"]}},
    "return_kv": True, "return_word_labels": True, "kv_codec": "int8", "kv_model": "abc", "kv_best_effort": True,
    "order": "edges", "html_output": True, "messages": (Message("user", "Why?"),), "verbatim_turns": 2,
    "history_mode": "stable", "cache_salt": "salt", "llm": "llama",
}


def test_the_sample_covers_every_field() -> None:
    assert set(SAMPLE) | {"target_tokens"} == SENT  # target_tokens shares a oneof with rate: see below


def test_the_proto_has_every_field_and_nothing_else() -> None:
    assert {f.name for f in pb.CompressRequest.DESCRIPTOR.fields} == SENT


@pytest.mark.parametrize("target", [{"rate": 0.25}, {"target_tokens": 40}])
def test_every_field_crosses_the_wire_both_ways(target) -> None:
    request = CompressRequest(**{**{k: v for k, v in SAMPLE.items() if k != "rate"}, **target})
    assert wire.request_from_proto(wire.request_to_proto(request)) == request


def test_the_client_takes_every_field() -> None:
    assert set(inspect.signature(build_request).parameters) == SENT


def test_the_cli_offers_every_field_or_its_declaration_says_why_not() -> None:
    from ctxcomp.cli import build_parser

    parser = build_parser()
    compress = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["compress"]
    dests = {a.dest for a in compress._actions}
    offered = {name for name in SENT if not SPECS[name].not_on_cli}
    assert offered <= dests, f"fields with no `ctxcomp compress` flag: {sorted(offered - dests)}"
    assert FIELDS - SENT == {"tenant"}  # set by the server from the caller's authentication


def test_every_field_has_help() -> None:
    assert all(spec.help for spec in SPECS.values())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("rate", 0.0, "must be in (0, 1], got 0.0"),
    ("rate", float("nan"), "must be in (0, 1], got nan"),
    ("target_tokens", 0, "must be positive, got 0"),
    ("order", "random", "must be one of original, relevance, edges, got 'random'"),
    ("history_mode", "x", "must be one of relevance, stable, got 'x'"),
    ("verbatim_turns", -1, "must be at least 0, got -1"),
    ("cache_salt", "s" * 257, "257 characters, limit is 256"),
])
def test_the_declared_choices_and_ranges_are_checked(field, value, message) -> None:
    request = dataclasses.replace(CompressRequest("q", (Document("a", "x"),)), **{field: value})
    with pytest.raises(InvalidRequest) as raised:
        check_fields(request)
    assert (raised.value.field, raised.value.message) == (field, message)


def test_an_unset_proto_field_reads_as_the_declared_default() -> None:
    request = wire.request_from_proto(pb.CompressRequest(query="q"))
    assert request == CompressRequest("q", ())
    assert wire.request_from_proto(pb.CompressRequest(query="q", verbatim_turns=0)).verbatim_turns == 0


def wrapper_fields(cls) -> set[str]:
    fields = getattr(cls, "model_fields", None)
    return set(fields) if fields is not None else set(inspect.signature(cls.__init__).parameters)


def test_every_wrapper_sends_the_text_fields() -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from ctxcomp.frameworks import request_options
    from ctxcomp.haystack import CtxcompDocumentCompressor
    from ctxcomp.langchain import CtxcompCompressor, CtxcompRetriever
    from ctxcomp.llamaindex import CtxcompNodePostprocessor

    assert WRAPPER_FIELDS <= SENT and set(inspect.signature(request_options).parameters) == WRAPPER_FIELDS
    for cls in (CtxcompCompressor, CtxcompNodePostprocessor, CtxcompDocumentCompressor):
        assert WRAPPER_FIELDS <= wrapper_fields(cls), (cls.__name__, sorted(WRAPPER_FIELDS - wrapper_fields(cls)))
    assert RETRIEVER_FIELDS <= wrapper_fields(CtxcompRetriever)
