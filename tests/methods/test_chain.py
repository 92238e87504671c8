"""Chains are ordinary methods: per-item configs, batched stages, spans into the original text."""

from __future__ import annotations

import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.methods.chain import Chain, ChainConfig, compose
from ctxcomp.types import CompressRequest, Document, Span

SUPER_BOWL = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
    "California."
)
KITCHEN = (
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough. Bakers keep a starter "
    "of flour and water and feed it daily. A long, cold proof gives the loaf its sour taste and open crumb."
)


def chain_request(options: dict, **kwargs) -> CompressRequest:
    docs = (Document("sb", SUPER_BOWL), Document("k", KITCHEN))
    return CompressRequest("Who won Super Bowl 50?", docs, method="exit>llmlingua2", options=options, **kwargs)


# Options that change what each stage keeps: a loose vs a strict EXIT, a light vs a heavy LLMLingua-2.
OPTIONS = [
    {"exit": {"threshold": 0.05, "min_sentences": 3}, "llmlingua2": {"rate": 0.9}},
    {"exit": {"threshold": 0.99, "min_sentences": 1}, "llmlingua2": {"rate": 0.2}},
    {"exit": {"threshold": 0.05, "min_sentences": 3}, "llmlingua2": {"rate": 0.2, "force_tokens": ["Broncos"]}},
]


def test_a_batch_of_chain_requests_gives_each_its_own_result(compressor) -> None:
    requests = [chain_request(o) for o in OPTIONS]
    alone = [compressor.compress(r) for r in requests]
    together = compressor.compress_batch(requests)
    assert [r.context for r in together] == [r.context for r in alone]
    assert [r.tokens_after for r in together] == [r.tokens_after for r in alone]
    assert len({r.tokens_after for r in alone}) == len(OPTIONS)  # the options really differ in effect


def test_chain_config_holds_one_config_per_stage_and_the_strictest_gate(compressor) -> None:
    chain = compressor.method("exit>llmlingua2")
    assert isinstance(chain, Chain) and chain.requires[0] == "relevance"
    config = chain.configure({"exit": {"selective": True, "relevance_threshold": 0.2}, "llmlingua2": {"selective": True}})
    assert isinstance(config, ChainConfig) and len(config.stages) == 2
    assert config.selective and config.relevance_threshold == pytest.approx(0.2)
    assert config.stages[1].rate == pytest.approx(0.33)


def test_chain_options_are_checked_per_stage(compressor) -> None:
    chain = compressor.method("exit>llmlingua2")
    with pytest.raises(InvalidRequest) as err:
        chain.configure({"llmlingua2": {"rate": 7}})
    assert err.value.field == "options.llmlingua2.rate"
    with pytest.raises(InvalidRequest) as err:
        chain.configure({"exit": 3})
    assert err.value.field == "options.exit"


def test_a_vector_method_only_ends_a_chain(compressor) -> None:
    assert compressor.method("exit>xrag").output == "vectors"
    with pytest.raises(InvalidRequest) as err:
        compressor.method("xrag>exit")
    assert err.value.field == "method"


def test_compose_maps_inner_spans_back_to_the_original() -> None:
    original = "alpha beta gamma delta epsilon"
    outer = (Span(0, 10), Span(17, 30))  # "alpha beta" and "delta epsilon"
    outer_text = "alpha beta delta epsilon"
    inner = (Span(6, 16),)  # "beta delta" across the joint
    assert [original[s.start : s.end] for s in compose(outer, outer_text, original, inner)] == ["beta", "delta"]


def test_a_stage_that_keeps_nothing_says_so(compressor) -> None:
    options = {"exit": {"threshold": 0.99, "min_sentences": 1}, "recomp_extractive": {"rate": 0.05}}
    request = chain_request(options)
    result = compressor.compress(CompressRequest(request.query, request.documents, "exit>recomp_extractive>llmlingua2", options=options))
    assert result.context == ""
    assert "recomp_extractive kept none of the" in result.note and "so llmlingua2 had no text" in result.note
