"""Cascade, the default method: documents ranked, budget split by relevance, sentences kept,
tokens cut only at the budget's edge."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest

from ctxcomp.cli import DEMO_RATE
from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document


def demo_request(**kwargs) -> CompressRequest:
    sample = json.loads(resources.files("ctxcomp.samples").joinpath("rag_request.json").read_text())
    documents = tuple(Document(d["id"], d["text"], d.get("metadata", {})) for d in sample["documents"])
    return CompressRequest(sample["query"], documents, **kwargs)


def test_the_demo_drops_the_weather_and_keeps_why_the_vasa_sank(compressor) -> None:
    """`make demo`: the default method on the embedded sample at the demo's rate."""
    result = compressor.compress(demo_request(rate=DEMO_RATE))
    assert result.method == "cascade"
    by_id = {d.id: d for d in result.documents}
    assert by_id["stockholm-weather"].text == ""
    assert "top-heavy" in result.context and "10 August 1628" in result.context
    assert result.tokens_after <= int(result.tokens_before * DEMO_RATE)
    assert by_id["vasa-1"].score > by_id["stockholm-weather"].score


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.1])
def test_the_budget_is_never_exceeded_and_documents_keep_their_order(compressor, rate) -> None:
    result = compressor.compress(demo_request(method="cascade", rate=rate))
    assert 0 < result.tokens_after <= int(result.tokens_before * rate)
    assert [d.id for d in result.documents] == [d.id for d in demo_request().documents]
    for doc, original in zip(result.documents, demo_request().documents):
        assert all(original.text[s.start : s.end] in doc.text for s in doc.kept_spans)


def test_token_weight_zero_keeps_whole_sentences(compressor, hub) -> None:
    from ctxcomp.text import split_sentences

    request = demo_request(method="cascade", rate=0.3, options={"token_weight": 0.0})
    result = compressor.compress(request)
    split = split_sentences(hub.get("spacy"), [d.text for d in request.documents])
    assert result.tokens_after > 0
    for doc, sentences in zip(result.documents, split):
        for span in doc.kept_spans:  # adjacent kept sentences merge into one span
            assert span.start in sentences.starts.tolist() and span.end in sentences.ends.tolist()


def test_each_request_of_a_batch_keeps_its_own_options(compressor) -> None:
    requests = [
        demo_request(method="cascade", rate=0.5, options={"token_weight": 0.0}),
        demo_request(method="cascade", rate=0.5, options={"drop_below": 0.9}),
        demo_request(method="cascade", rate=0.15),
    ]
    assert [r.context for r in compressor.compress_batch(requests)] == [compressor.compress(r).context for r in requests]


def test_a_strict_drop_threshold_without_filling_keeps_only_the_best_document(compressor) -> None:
    options = {"drop_below": 0.9999, "fill_budget": False}
    result = compressor.compress(demo_request(method="cascade", rate=0.9, options=options))
    kept = [d.id for d in result.documents if d.text]
    assert kept == ["vasa-1"] and "dropped whole" in result.note
    assert result.tokens_after < 0.9 * result.tokens_before / 2  # a cap, left unspent


SANK = Document("sank", "The Vasa sank on 10 August 1628, less than a mile into her maiden voyage.")
BUILT = Document("built", "The Vasa was a warship built in Stockholm for King Gustavus Adolphus. She sank in Stockholm "
                          "harbour in 1628 because she was top-heavy and unstable. The museum that shows her opened in "
                          "1990. Tickets can be bought online.")
SUMMER = Document("summer", "Stockholm summers are mild, with long daylight hours in June and July.")


def test_budget_the_relevant_documents_leave_buys_weighty_sentences_of_dropped_ones_or_nothing(compressor) -> None:
    """With every document but the best dropped, a loose budget brings back a dropped document's
    sentence that answers, and nothing of one that does not: a target is a cap, not a quota."""
    request = CompressRequest("Why did the Vasa sink?", (SANK, BUILT, SUMMER), method="cascade", rate=1.0,
                              options={"drop_below": 0.9999})
    result = compressor.compress(request)
    by_id = {d.id: d for d in result.documents}
    assert by_id["summer"].text == ""  # it would fit, and buys nothing
    assert "10 August 1628" in result.context and "top-heavy" in result.context
    assert result.tokens_after <= result.tokens_before - by_id["summer"].tokens_before


def cascade_cases() -> list[CompressRequest]:
    """The cascade requests of this file, at loose and tight budgets."""
    near_miss = near_miss_request()
    return [
        *(demo_request(method="cascade", rate=rate) for rate in (DEMO_RATE, 0.5, 0.7, 0.9)),
        *(CompressRequest("Why did the Vasa sink?", (SANK, BUILT, SUMMER), method="cascade", rate=rate) for rate in (0.3, 0.6, 0.9)),
        *(dataclasses.replace(near_miss, method="cascade", rate=rate) for rate in (0.2, 0.33, 0.5, 0.8)),
    ]


def test_dropped_documents_come_back_only_as_whole_weighty_sentences(compressor, hub) -> None:
    """Text of a document the cascade judged irrelevant (fill_budget's padding) is whole sentences,
    each above the relevance model's sentence threshold and longer than two words: never scraps."""
    from ctxcomp import relevance
    from ctxcomp.text import split_sentences

    threshold = float(hub.get("relevance").meta["sentence_threshold"])
    for request in cascade_cases():
        result = compressor.compress(request)
        scores = relevance.score(hub, [request])[0]
        best = max(range(len(scores)), key=lambda d: scores[d].relevance)
        split = split_sentences(hub.get("spacy"), [d.text for d in request.documents])
        for d, (doc, sentences, score) in enumerate(zip(result.documents, split, scores)):
            if d == best or score.probability >= 0.05 or not doc.text:  # 0.05: drop_below's default
                continue
            starts, ends = sentences.starts.tolist(), sentences.ends.tolist()
            for span in doc.kept_spans:
                assert span.start in starts and span.end in ends, (request.query, doc.id, doc.text)
                first, last = starts.index(span.start), ends.index(span.end)
                for s in range(first, last + 1):
                    assert relevance.sigmoid(score.sentence_logits[s]) >= threshold, (request.query, doc.id, doc.text)
                    assert len(request.documents[d].text[starts[s] : ends[s]].split()) > 2


def near_miss_request() -> CompressRequest:
    """Six documents a retriever might return for a bridge-collapse question: one answers, the
    others are other collapses, the town, another bridge and inspection rules (texts written for this test)."""
    sample = json.loads((Path(__file__).parents[1] / "data" / "near_miss_bridges.json").read_text())
    return CompressRequest(sample["query"], tuple(Document(d["id"], d["text"]) for d in sample["documents"]))


NEAR_MISS_OPEN = pytest.mark.xfail(
    strict=True,
    reason="the relevance model ranks a near miss first and its sentence head misses the causal sentences; "
           "retraining with retrieved near misses did not fix it (ctxcomp/models/relevance/MODEL_CARD.md)",
)


@NEAR_MISS_OPEN
def test_a_near_miss_of_another_bridge_does_not_outrank_the_answering_document(hub) -> None:
    from ctxcomp import relevance

    request = near_miss_request()
    scores = relevance.score(hub, [request])[0]
    ranked = sorted(zip(scores, request.documents), key=lambda pair: -pair[0].relevance)
    assert ranked[0][1].id == "silver-bridge", [(d.id, round(float(s.probability), 4)) for s, d in ranked]


@NEAR_MISS_OPEN
def test_the_causes_of_the_collapse_survive_at_a_third_of_the_tokens(compressor) -> None:
    result = compressor.compress(dataclasses.replace(near_miss_request(), method="cascade", rate=0.33))
    kept = {d.id: d.text for d in result.documents}["silver-bridge"]
    assert "eyebar" in kept and "cracked" in kept, kept
    assert "no redundancy" in kept, kept


@pytest.mark.parametrize("options, field", [({"temperature": 0}, "options.temperature"), ({"drop_below": 1.0}, "options.drop_below"),
                                            ({"token_weight": -1}, "options.token_weight"), ({"edge_cut": "word"}, "options.edge_cut"),
                                            ({"sentence_floor": 1.0}, "options.sentence_floor")])
def test_bad_options_name_the_field(compressor, options, field) -> None:
    with pytest.raises(InvalidRequest) as err:
        compressor.plan(demo_request(method="cascade", options=options))
    assert err.value.field == field


def test_cascade_needs_a_query(compressor) -> None:
    with pytest.raises(InvalidRequest) as err:
        compressor.plan(dataclasses.replace(demo_request(method="cascade"), query=" "))
    assert err.value.field == "query"


VASA = "The Vasa sank in 1628 because it was top-heavy and unstable. It was built in Stockholm. The weather was fine that day."
PARIS = "Paris is the capital of France. It rains often in autumn."


def vasa_request(texts: tuple[str, ...], rate: float, **options) -> CompressRequest:
    documents = tuple(Document(str(i), text) for i, text in enumerate(texts))
    return CompressRequest("Why did the Vasa sink?", documents, method="cascade", rate=rate, options=options)


def sentence_pieces(hub, result, request) -> list[tuple[int, int, int]]:
    """(document, sentence, runs of kept words) for every sentence of which some but not all words are kept."""
    from ctxcomp.text import segment_words, sentence_of_word, split_sentences

    out = []
    for d, (doc, sentences) in enumerate(zip(result.documents, split_sentences(hub.get("spacy"), [x.text for x in request.documents]))):
        words = segment_words(request.documents[d].text)
        owner = sentence_of_word(words, sentences)
        kept = [any(s.start <= a and b <= s.end for s in doc.kept_spans) for a, b in zip(words.starts, words.ends)]
        for sentence in range(len(sentences)):
            flags = [k for k, o in zip(kept, owner) if o == sentence]
            if any(flags) and not all(flags):
                runs = sum(1 for i, k in enumerate(flags) if k and (i == 0 or not flags[i - 1]))
                out.append((d, sentence, runs))
    return out


@pytest.mark.parametrize("texts", [(VASA, PARIS), (VASA,)])
@pytest.mark.parametrize("rate", [0.5, 0.33])
def test_the_default_clause_cut_keeps_one_contiguous_clause_of_the_edge_sentence_or_none(compressor, hub, texts, rate) -> None:
    """No "It Stockholm." and no "The Vasa 1628 it was...": at most one sentence per document is
    cut, and what stays of it is one run of text (the reader bench chose this cut on dev)."""
    request = vasa_request(texts, rate)
    result = compressor.compress(request)
    assert 0 < result.tokens_after <= int(result.tokens_before * rate)
    assert "It Stockholm" not in result.context and "Vasa 1628" not in result.context
    pieces = sentence_pieces(hub, result, request)
    assert len({d for d, _, _ in pieces}) == len(pieces)  # one cut sentence per document at most
    assert all(runs == 1 for _, _, runs in pieces)


def test_the_why_of_the_vasa_survives_a_clause_cut(compressor) -> None:
    result = compressor.compress(vasa_request((VASA,), 0.33, edge_cut="clause"))
    assert "because it was top-heavy and unstable." in result.context


def test_a_sentence_cut_keeps_whole_sentences_only(compressor, hub) -> None:
    request = vasa_request((VASA, PARIS), 0.5, edge_cut="sentence")
    result = compressor.compress(request)
    assert result.tokens_after > 0 and sentence_pieces(hub, result, request) == []


def test_a_words_cut_may_keep_the_best_words_of_a_sentence(compressor, hub) -> None:
    request = vasa_request((VASA,), 0.5, edge_cut="words")
    result = compressor.compress(request)
    assert sentence_pieces(hub, result, request)


def test_a_sentence_floor_makes_the_target_a_cap(compressor) -> None:
    """At 0.8 of the tokens the Vasa's construction and the weather fill the budget; with a floor
    only what the query needs stays, and the best sentence stays even at a floor above it."""
    loose = compressor.compress(vasa_request((VASA, PARIS), 0.8))
    capped = compressor.compress(vasa_request((VASA, PARIS), 0.8, sentence_floor=0.33))
    assert "The weather was fine" in loose.context
    assert capped.context == "The Vasa sank in 1628 because it was top-heavy and unstable."
    assert capped.tokens_after < loose.tokens_after
    strictest = compressor.compress(vasa_request((VASA, PARIS), 0.8, sentence_floor=0.999))
    assert strictest.context == capped.context


def test_clauses_end_at_punctuation_and_before_conjunctions() -> None:
    import numpy as np

    from ctxcomp.methods.cascade import clause_spans
    from ctxcomp.text import segment_words

    words = segment_words("The ship, built in 1626, sank because it was top-heavy; nobody drowned.")
    spans = clause_spans(words, np.arange(len(words)))
    texts = [" ".join(words.strings()[a:b]) for a, b in spans]
    assert texts == ["The ship,", "built in 1626,", "sank", "because it was top-heavy;", "nobody drowned."]


def test_a_budget_too_small_for_any_clause_still_keeps_the_best_words(compressor) -> None:
    result = compressor.compress(CompressRequest("Why did the Vasa sink?", (Document("0", VASA),), method="cascade",
                                                 target_tokens=4))
    assert 0 < result.tokens_after <= 4
