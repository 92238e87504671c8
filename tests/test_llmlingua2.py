"""LLMLingua-2 on the shipped classifier: budgets, forced words, text integrity."""

from __future__ import annotations

import numpy as np
import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document

PARAGRAPH = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football "
    "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
    "defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their third "
    "Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay "
    "Area at Santa Clara, California."
)


def request(*texts: str, **kwargs) -> CompressRequest:
    docs = tuple(Document(f"d{i}", t, {"n": str(i)}) for i, t in enumerate(texts))
    return CompressRequest(query="", documents=docs, **kwargs)


@pytest.mark.parametrize("target", [10, 25, 40, 77])
def test_target_tokens_is_never_exceeded_and_nearly_met(compressor, hub, target) -> None:
    result = compressor.compress(request(PARAGRAPH, PARAGRAPH.upper(), target_tokens=target))
    counted = sum(hub.count_tokens([d.text for d in result.documents]))
    assert result.tokens_after == counted <= target
    assert counted >= target - 3


def test_rate_sets_the_budget_over_all_documents(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, "A short second document about football.", rate=0.5))
    assert result.tokens_after <= int(result.tokens_before * 0.5)
    assert 1.9 <= result.ratio <= 2.2
    assert [d.id for d in result.documents] == ["d0", "d1"]
    assert result.documents[0].metadata == {"n": "0"}


def test_kept_spans_are_the_original_text(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, rate=0.4))
    doc = result.documents[0]
    pieces = [PARAGRAPH[s.start : s.end] for s in doc.kept_spans]
    assert " ".join(pieces) == doc.text
    assert all(a.end < b.start for a, b in zip(doc.kept_spans, doc.kept_spans[1:]))


def test_force_tokens_and_digits_are_kept(compressor) -> None:
    options = {"force_tokens": ["Panthers", "Stadium"], "force_reserve_digit": True}
    result = compressor.compress(request(PARAGRAPH, rate=0.5, options=options))
    text = result.documents[0].text
    for word in ["Panthers", "Stadium", "50", "2015", "24-10", "7,", "2016,"]:
        assert word in text.split(), word


def test_drop_consecutive_keeps_one_of_a_run(compressor) -> None:
    text = "Alpha beta , , , gamma delta ! ! epsilon"
    options = {"force_tokens": [",", "!"], "drop_consecutive": True}
    result = compressor.compress(request(text, rate=1.0, options=options))
    assert result.documents[0].text.split().count(",") == 1
    assert result.documents[0].text.split().count("!") == 1


def test_empty_and_whitespace_documents(compressor) -> None:
    result = compressor.compress(request("", "   \n\t ", PARAGRAPH, rate=0.5))
    assert [d.text for d in result.documents[:2]] == ["", ""]
    assert result.documents[0].tokens_before == 0
    assert [d.tokens_after for d in result.documents[:2]] == [0, 0]
    assert result.documents[2].text


def test_non_english_text_round_trips(compressor) -> None:
    cjk = "東京は日本の首都であり、世界最大の都市圏の一つである。人口は約千四百万人。"
    accented = "Le château de Versailles, résidence des rois de France, fut agrandi sous Louis XIV à partir de 1661."
    result = compressor.compress(request(cjk, accented, rate=1.0))
    assert result.documents[0].text == cjk
    assert result.documents[1].text == accented
    half = compressor.compress(request(cjk, accented, rate=0.5))
    for doc, original in zip(half.documents, (cjk, accented)):
        assert "\ufffd" not in doc.text
        assert all(original[s.start : s.end] in doc.text for s in doc.kept_spans)


def test_word_labels_match_the_decision(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, rate=0.3, return_word_labels=True))
    doc = result.documents[0]
    kept = [PARAGRAPH[w.start : w.end] for w in doc.word_labels if w.kept]
    assert " ".join(kept) == doc.text
    assert all(0.0 <= w.score <= 1.0 for w in doc.word_labels)


def test_long_document_is_chunked_not_truncated(compressor, hub) -> None:
    from ctxcomp import wordscore

    long_text = " ".join([PARAGRAPH] * 12)  # ~1,000 encoder tokens
    result = compressor.compress(request(long_text, rate=1.0))
    assert result.documents[0].text == long_text
    classifier = hub.token_classifier()
    words = wordscore.segment(long_text).strings()
    chunks = wordscore.chunk_words(classifier.tokenizer, words, 0, classifier.max_length)
    assert len(chunks) >= 2
    assert all(len(c.input_ids) <= classifier.max_length for c in chunks)
    covered = [w for c in chunks for w in dict.fromkeys(o for o in c.word_of_token if o >= 0)]
    assert covered == list(range(len(words)))  # every word, once, in order
    assert all(words[c.first_word - 1].endswith(".") for c in chunks[1:])  # cut at sentence ends


def test_trained_classifier_prefers_answer_words(hub, squad_held_out) -> None:
    """On held-out articles, gold-answer words score higher than the rest (a random head would not)."""
    from ctxcomp import wordscore
    from ctxcomp.models.train_token_classifier import word_labels

    paragraphs = squad_held_out[:40]
    words = [wordscore.segment(p.context) for p in paragraphs]
    scores = wordscore.score_documents(hub.token_classifier(), [w.strings() for w in words])
    labels = np.concatenate([word_labels(p, w) for p, w in zip(paragraphs, words)]).astype(bool)
    flat = np.concatenate(scores)
    assert flat[labels].mean() > flat[~labels].mean() + 0.15


def test_bad_rate_option_is_rejected(compressor) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compressor.compress(request(PARAGRAPH, options={"rate": 1.5}))
    assert caught.value.field == "options.rate"
