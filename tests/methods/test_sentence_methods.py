"""Sentence-level methods on real models: EXIT, RECOMP (extractive, abstractive), MIG,
selective augmentation and chaining."""

from __future__ import annotations

import numpy as np
import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.methods.recomp_abstractive import unsupported_facts
from ctxcomp.embedding import top_k_similarity
from ctxcomp.types import CompressRequest, Document

SUPER_BOWL = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
    "California. As this was the 50th Super Bowl, the league emphasized the \"golden anniversary\" with various "
    "gold-themed initiatives."
)
KITCHEN = (
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough. Bakers keep a starter "
    "of flour and water and feed it daily. A long, cold proof gives the loaf its sour taste and open crumb."
)


def request(query: str, *texts: str, **kwargs) -> CompressRequest:
    docs = tuple(Document(f"d{i}", t, {"n": str(i)}) for i, t in enumerate(texts))
    return CompressRequest(query=query, documents=docs, **kwargs)


def test_exit_keeps_the_answer_sentence(compressor) -> None:
    result = compressor.compress(request("Where was Super Bowl 50 played?", SUPER_BOWL, KITCHEN, method="exit"))
    assert "Levi's Stadium" in result.context
    assert result.documents[1].text == ""  # the bread document has nothing for this question
    assert 0 < result.documents[0].tokens_after < result.documents[0].tokens_before  # sentences were dropped


def test_exit_keeps_answers_of_held_out_squad_questions(compressor, squad_held_out) -> None:
    """Adaptive EXIT on paragraphs it never saw in training: the answer survives for most questions."""
    kept, asked = 0, 0
    for paragraph in squad_held_out[:8]:
        for question in paragraph.questions[:2]:
            result = compressor.compress(request(question.text, paragraph.context, method="exit"))
            kept += any(a in result.context for a in question.answers)
            asked += 1
            assert result.tokens_after <= result.tokens_before
    assert kept / asked >= 0.6, f"{kept}/{asked}"


@pytest.mark.parametrize("method", ["exit", "recomp_extractive", "mig", "exit>llmlingua2"])
def test_budget_is_never_exceeded_and_spans_are_original_text(compressor, hub, method) -> None:
    texts = (SUPER_BOWL, KITCHEN)
    result = compressor.compress(request("Who won Super Bowl 50?", *texts, method=method, rate=0.3))
    assert result.tokens_after <= int(result.tokens_before * 0.3)
    assert result.tokens_after == sum(hub.count_tokens([d.text for d in result.documents]))
    for doc, text in zip(result.documents, texts):
        pieces = [text[s.start : s.end] for s in doc.kept_spans]
        assert all(p in doc.text for p in pieces)
        assert bool(pieces) == bool(doc.text)
    assert [d.metadata for d in result.documents] == [{"n": "0"}, {"n": "1"}]


def test_recomp_extractive_keeps_the_encoders_nearest_sentences(compressor, hub) -> None:
    query = "How does sourdough get its sour taste?"
    result = compressor.compress(
        request(query, SUPER_BOWL, KITCHEN, method="recomp_extractive", options={"top_k": 2, "rate": 1.0})
    )
    assert result.documents[0].text == ""
    sentences = [s.text.strip() for s in hub.get("spacy")(KITCHEN).sents]
    embedded = hub.get("sentence_encoder").encode([query, *sentences], normalize_embeddings=True)
    nearest = sorted(np.argsort(-(embedded[1:] @ embedded[0]))[:2])
    assert result.context == " ".join(sentences[i] for i in nearest)


def test_faiss_search_matches_the_exact_scan() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(300, 16)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    query = candidates[7] + 0.1
    query /= np.linalg.norm(query)
    with_faiss = top_k_similarity(query, candidates, 10, faiss_from=1)
    scan = top_k_similarity(query, candidates, 10, faiss_from=10_000)
    assert np.array_equal(np.isfinite(with_faiss), np.isfinite(scan))
    assert np.allclose(with_faiss[np.isfinite(scan)], scan[np.isfinite(scan)], atol=1e-5)
    assert np.argmax(with_faiss) == 7


def test_mig_drops_an_exact_duplicate_passage(compressor) -> None:
    result = compressor.compress(request("Who won Super Bowl 50?", SUPER_BOWL, KITCHEN, SUPER_BOWL, method="mig", rate=0.5))
    copies = [d for d in result.documents if d.id in ("d0", "d2")]
    assert sum(bool(d.text) for d in copies) == 1
    assert "duplicate" in result.note
    assert "Denver Broncos" in result.context


def test_mig_does_not_keep_a_sentence_twice_across_documents(compressor) -> None:
    shared = "The Denver Broncos defeated the Carolina Panthers 24–10."
    result = compressor.compress(
        request("Who won Super Bowl 50?", f"{shared} Broncos fans celebrated downtown.",
                f"Coverage was broadcast nationwide. {shared}", method="mig", rate=0.9)
    )
    assert result.context.count(shared) == 1


def test_abstractive_summary_states_no_number_absent_from_the_sources(compressor) -> None:
    result = compressor.compress(request("Who won Super Bowl 50 and by what score?", SUPER_BOWL, method="recomp_abstractive", rate=0.5))
    assert result.context
    assert unsupported_facts(result.context, [SUPER_BOWL]) == []
    assert result.tokens_after <= int(result.tokens_before * 0.5)


def test_the_guard_flags_invented_numbers_and_names() -> None:
    sources = ["The Broncos beat the Panthers 24–10 on February 7, 2016 in Santa Clara."]
    assert unsupported_facts("The Broncos won 24–10 in 2016 in Santa Clara.", sources) == []
    assert unsupported_facts("The Broncos won 31–10 in Paris on 1,200 yards.", sources) == ["31", "1,200", "Paris"]
    assert unsupported_facts("The Panthers' defense struggled.", sources) == []


@pytest.mark.parametrize("method", ["exit", "llmlingua2", "mig"])
def test_selective_augmentation_returns_nothing_for_off_topic_documents(compressor, method) -> None:
    off = compressor.compress(request("Who won Super Bowl 50?", KITCHEN, method=method, options={"selective": True}))
    assert off.context == "" and off.tokens_after == 0
    assert "no document is relevant" in off.note
    on = compressor.compress(request("Who won Super Bowl 50?", SUPER_BOWL, KITCHEN, method=method, options={"selective": True}))
    assert "Super Bowl" in on.context and not on.note


def test_chain_runs_exit_then_llmlingua2_with_per_stage_options(compressor) -> None:
    chained = compressor.compress(
        request("Who won Super Bowl 50?", SUPER_BOWL, KITCHEN, method="exit>llmlingua2", target_tokens=12,
                options={"exit": {"threshold": 0.3}, "llmlingua2": {"force_tokens": ["Broncos"]}})
    )
    assert chained.method == "exit>llmlingua2"
    assert chained.tokens_after <= 12
    assert "Broncos" in chained.context
    assert chained.tokens_before == compressor.compress(request("q", SUPER_BOWL, KITCHEN, rate=1.0)).tokens_before
    doc = chained.documents[0]
    assert " ".join(SUPER_BOWL[s.start : s.end] for s in doc.kept_spans) == doc.text


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"method": "exit", "query": ""}, "query"),
        ({"method": "llmlingua2", "query": "", "options": {"selective": True}}, "query"),
        ({"method": "exit>llmlingua2", "options": {"rate": 0.5}}, "options.rate"),
        ({"method": "exit>llmlingua2", "options": {"exit": {"threshold": 2.0}}}, "options.exit.threshold"),
        ({"method": "exit>exit"}, "method"),
        ({"method": "exit>nope"}, "method"),
        ({"method": "mig", "options": {"redundancy_weight": -1}}, "options.redundancy_weight"),
    ],
)
def test_bad_sentence_method_requests_name_the_field(compressor, kwargs, field) -> None:
    query = kwargs.pop("query", "Who won?")
    with pytest.raises(InvalidRequest) as err:
        compressor.compress(request(query, SUPER_BOWL, **kwargs))
    assert err.value.field == field


def test_chained_request_over_grpc(client) -> None:
    result = client.compress(
        "Who won Super Bowl 50?", [SUPER_BOWL, KITCHEN], method="exit>llmlingua2", rate=0.2,
        options={"exit": {"min_sentences": 1}, "llmlingua2": {"force_reserve_digit": True}},
    )
    assert result.method == "exit>llmlingua2"
    assert 0 < result.tokens_after <= int(result.tokens_before * 0.2)
