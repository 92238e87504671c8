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
from ctxcomp.types import CompressRequest, Document, Message
from ctxcomp.v1 import ctxcomp_pb2 as pb

FIELDS = {f.name for f in dataclasses.fields(CompressRequest)}
SERVER_ONLY = {"tenant"}  # set from the caller's authentication, never read from the wire
SENT = FIELDS - SERVER_ONLY
# What the CLI's `compress` (plain text out) does not offer, and why.
NOT_ON_THE_CLI = {
    "documents": "read from the JSONL input",
    "return_kv": "KV blobs are bytes for a program: the Python client (compress_with_kv)",
    "kv_codec": "with return_kv", "kv_model": "with return_kv", "kv_best_effort": "with return_kv",
    "cache_salt": "with return_kv",
    "messages": "a conversation is structured input: the Python client",
    "verbatim_turns": "with messages", "history_mode": "with messages",
}
CLI_FLAG = {"return_word_labels": "word_labels", "options": "option"}  # field -> the compress parser's dest, where they differ
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


def test_the_cli_offers_every_field_or_says_why_not() -> None:
    from ctxcomp.cli import build_parser

    parser = build_parser()
    compress = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["compress"]
    dests = {a.dest for a in compress._actions} | {"input"}
    offered = {CLI_FLAG.get(name, name) for name in SENT - set(NOT_ON_THE_CLI)}
    assert offered <= dests, f"fields with no `ctxcomp compress` flag: {sorted(offered - dests)}"
    assert set(NOT_ON_THE_CLI) <= SENT


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
