"""Near-miss documents for training and benches: BM25 over an index equals BM25 computed
directly, other articles only, and never a paragraph that holds the answer."""

from __future__ import annotations

import numpy as np
import pytest

from ctxcomp.lexical import bm25
from training import distractors
from training.squad import Paragraph, Question

QUESTION = Question("q", "Why did the Silver Bridge fall into the Ohio River?", ("an eyebar cracked",), (0,))
PARAGRAPHS = [
    Paragraph("Silver Bridge", 0, "The Silver Bridge fell into the Ohio River in 1967 because an eyebar cracked.", (QUESTION,)),
    Paragraph("Silver Bridge", 1, "The Silver Bridge was painted with aluminium and opened in 1928 over the Ohio River.", ()),
    Paragraph("I-35W", 0, "The I-35W bridge fell into the Mississippi River in 2007 after its gusset plates failed.", ()),
    Paragraph("Ohio River", 0, "The Ohio River flows past Point Pleasant, where a bridge once stood; an eyebar cracked there.", ()),
    Paragraph("Golden Gate", 0, "The Golden Gate Bridge opened in 1937 and is painted International Orange.", ()),
    Paragraph("Cooking", 0, "Bread rises because yeast makes carbon dioxide.", ()),
]


def test_the_index_gives_the_same_bm25_as_the_direct_formula() -> None:
    corpus = distractors.index(PARAGRAPHS)
    for query in (QUESTION.text, "bridge opened painted", "nothing matches zzz"):
        np.testing.assert_allclose(corpus.bm25(query), bm25(query, [p.context for p in PARAGRAPHS]), rtol=1e-12)


def test_near_misses_come_from_other_articles_and_never_hold_the_answer() -> None:
    corpus = distractors.index(PARAGRAPHS)
    found = distractors.near_misses(corpus, QUESTION, "Silver Bridge", k=3)
    assert [PARAGRAPHS[i].article for i in found] == ["I-35W", "Golden Gate", "Cooking"]  # "Ohio River" holds the answer


def test_encoder_ranking_orders_by_cosine_and_needs_embeddings() -> None:
    embeddings = np.eye(len(PARAGRAPHS), dtype=np.float32)
    corpus = distractors.index(PARAGRAPHS, embeddings)
    query = np.zeros(len(PARAGRAPHS), np.float32)
    query[[4, 5, 2]] = [0.9, 0.5, 0.1]
    assert distractors.near_misses(corpus, QUESTION, "Silver Bridge", 2, "encoder", query) == [4, 5]
    assert distractors.near_misses(corpus, QUESTION, "Silver Bridge", 2, "encoder", query, exclude=[4]) == [5, 2]
    with pytest.raises(ValueError, match="embeddings"):
        distractors.near_misses(distractors.index(PARAGRAPHS), QUESTION, "Silver Bridge", 2, "encoder", query)
