"""The direct backend calls give what transformers' tokenizer call gives, and step aside when they would not."""

from __future__ import annotations

import numpy as np
import pytest

from ctxcomp import tokenization
from ctxcomp.hub import ModelHub

TEXTS = ["The Vasa sank in 1628, 1,300 m from the quay.", "", "naïve café — 東京 <|endoftext|> done"]


@pytest.fixture(scope="module")
def hub():
    return ModelHub(precision="fp32")


@pytest.mark.parametrize("role", ["downstream_llm", "token_classifier"])
def test_counts_and_offsets_match_the_wrapper(hub, role) -> None:
    tokenizer = hub.get(role, "tokenizer") if role == "downstream_llm" else hub.get(role, "fp32").tokenizer
    tokenizer("a plain call")  # all-MiniLM's tokenizer.json loads with truncation and padding at 128
    assert tokenization._plain_backend(tokenizer) is not None
    wrapped = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    assert tokenization.token_ids(tokenizer, TEXTS) == wrapped
    assert tokenization.token_counts(tokenizer, TEXTS) == [len(ids) for ids in wrapped]
    words = " ".join(TEXTS).split()  # a document's words, one text each, as windows and wordscore pass them
    assert tokenization.token_ids(tokenizer, words) == tokenizer(words, add_special_tokens=False)["input_ids"]
    for text in TEXTS:
        expected = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets, words = tokenization.tokens_with_offsets(tokenizer, text)
        assert ids.tolist() == expected["input_ids"] and words == expected.word_ids()
        assert offsets.tolist() == [list(o) for o in expected["offset_mapping"]] and offsets.shape == (len(ids), 2)


@pytest.mark.parametrize("role", ["downstream_llm", "token_classifier", "relevance"])
def test_words_tokenize_as_they_would_alone(hub, role) -> None:
    """One pre-tokenized call for WordPiece, the per-word batch elsewhere: each word's ids either way."""
    tokenizer = hub.get(role, "tokenizer") if role == "downstream_llm" else hub.get(role, "fp32").tokenizer
    words = [*" ".join(TEXTS).split(), "U.S.-based", "don't", "\u200b", "(1990)", "ＡＢＣ", "🙂", "x" * 120]
    alone = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
    assert tokenization.word_token_ids(tokenizer, words) == alone
    one_call = tokenization._tokenizes_words_alone(tokenizer.backend_tokenizer)
    assert one_call == (role != "downstream_llm")  # byte-level BPE would give pre-tokenized words a space
    if one_call:
        assert [] in alone  # BERT's normalizer drops a zero-width space: still one (empty) entry


def test_a_backend_left_truncating_is_not_called_directly(hub) -> None:
    tokenizer = hub.get("token_classifier", "fp32").tokenizer
    long_text = "word " * 600
    tokenizer(long_text, truncation=True, max_length=16)  # transformers leaves truncation set on the backend
    try:
        assert tokenization._plain_backend(tokenizer) is None
        assert tokenization.token_counts(tokenizer, [long_text]) == [600]  # not cut at 16
        ids, _, _ = tokenization.tokens_with_offsets(tokenizer, long_text)
        assert len(ids) == 600
    finally:
        tokenizer(long_text)  # a plain call resets it for the other tests
    assert tokenization._plain_backend(tokenizer) is not None
    assert np.array_equal(tokenization.tokens_with_offsets(tokenizer, "a b")[0], tokenizer("a b", add_special_tokens=False)["input_ids"])
