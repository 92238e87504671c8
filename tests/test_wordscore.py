"""Word scores from the token classifier: the numpy reduction against a per-word loop over torch's softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxcomp import text, wordscore

DOCUMENTS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs mostly blue and red light.",
    "Short one.",
]


def expected_scores(classifier, words: list[str], aggregation: str) -> np.ndarray:
    """One chunk per document, scored by a plain loop: each word's mean (or first) sub-token probability."""
    (chunk,) = wordscore.chunk_words(classifier.tokenizer, words, 0, classifier.max_length)
    with torch.inference_mode():
        logits = classifier.model(input_ids=torch.tensor([chunk.input_ids])).logits
    probs = logits.float().softmax(-1)[0, :, 1].numpy()
    per_word: dict[int, list[float]] = {}
    for token, word in enumerate(chunk.word_of_token):
        if word >= 0:
            per_word.setdefault(word, []).append(float(probs[token]))
    pick = (lambda values: values[0]) if aggregation == "first" else np.mean
    return np.asarray([pick(per_word[w]) for w in range(len(words))])


@pytest.mark.parametrize("aggregation", ["mean", "first"])
def test_scores_are_per_word_reductions_of_token_probabilities(hub, aggregation) -> None:
    classifier = hub.get("token_classifier_fast")
    documents = [text.segment_words(d).strings() for d in DOCUMENTS]
    # A small token budget puts the documents in separate, differently padded batches.
    scores = wordscore.score_documents(classifier, documents, aggregation=aggregation, max_batch_tokens=64)
    assert [len(s) for s in scores] == [len(w) for w in documents]
    for words, got in zip(documents, scores):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected_scores(classifier, words, aggregation), atol=1e-6)


def test_keep_probability_is_the_softmax_of_label_one() -> None:
    logits = torch.tensor([[[0.0, 0.0], [2.0, -1.0], [-30.0, 40.0]]])
    np.testing.assert_allclose(wordscore.keep_probability(logits), logits.softmax(-1)[..., 1].numpy(), rtol=1e-6)
