"""Near-miss documents: what a retriever returns beside the answer.

A retriever's other results are paragraphs from other sources that look like the answer
(they share its words, or sit near it in an embedding space) and are about something else.
For a question, `near_misses` ranks the paragraphs of *other* articles by Okapi BM25 or by
bi-encoder cosine and drops every paragraph that holds one of the question's answer strings,
so the gold paragraph stays the only one that answers. Training (hard negatives for the
relevance model) and the benches (the retrieved-distractor setting) draw from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import sparse

from ctxcomp.lexical import terms
from training import squad

Ranking = Literal["bm25", "encoder"]
K1, B = 1.2, 0.75  # Okapi BM25's usual constants (ctxcomp.lexical.bm25 uses the same)


@dataclass(frozen=True)
class Corpus:
    """A paragraph collection indexed once: BM25 term weights and, optionally, embeddings."""

    paragraphs: list[squad.Paragraph]
    vocabulary: dict[str, int]
    weights: sparse.csc_matrix  # [P, V] BM25 weight of each term in each paragraph (idf x saturated tf)
    embeddings: np.ndarray | None  # [P, E] L2-normalised bi-encoder embeddings, or None

    def bm25(self, query: str) -> np.ndarray:
        """[P] BM25 score of each paragraph for the query's terms."""
        columns = sorted({self.vocabulary[t] for t in terms(query) if t in self.vocabulary})
        if not columns:
            return np.zeros(len(self.paragraphs))
        return np.asarray(self.weights[:, columns].sum(axis=1)).ravel()


def index(paragraphs: list[squad.Paragraph], embeddings: np.ndarray | None = None) -> Corpus:
    """The BM25 index of `paragraphs` (their own document frequencies and mean length)."""
    counts = [Counter(terms(p.context)) for p in paragraphs]
    vocabulary: dict[str, int] = {}
    rows, cols, tfs = [], [], []
    for row, counter in enumerate(counts):
        for term, tf in counter.items():
            rows.append(row)
            cols.append(vocabulary.setdefault(term, len(vocabulary)))
            tfs.append(tf)
    tf = sparse.csr_matrix((np.asarray(tfs, np.float64), (rows, cols)), shape=(len(paragraphs), len(vocabulary)))
    lengths = np.asarray(tf.sum(axis=1)).ravel()
    norm = K1 * (1.0 - B + B * lengths / max(float(lengths.mean()), 1.0)) if len(lengths) else lengths
    df = np.bincount(np.asarray(cols, np.int64), minlength=len(vocabulary))
    idf = np.log(1.0 + (len(paragraphs) - df + 0.5) / (df + 0.5))
    saturated = tf.copy()
    saturated.data = saturated.data * (K1 + 1.0) / (saturated.data + np.repeat(norm, np.diff(tf.indptr)))
    return Corpus(paragraphs, vocabulary, sparse.csc_matrix(saturated.multiply(idf[None, :])), embeddings)


def holds_answer(paragraph: squad.Paragraph, question: squad.Question) -> bool:
    context = paragraph.context.lower()
    return any(answer.strip().lower() in context for answer in question.answers if answer.strip())


def near_misses(
    corpus: Corpus, question: squad.Question, article: str, k: int, ranking: Ranking = "bm25",
    query_embedding: np.ndarray | None = None, exclude: Sequence[int] = (),
) -> list[int]:
    """Indices of the `k` paragraphs of articles other than `article` that `ranking` puts highest
    for the question, none holding one of its answers, none in `exclude`; best first."""
    if ranking == "encoder":
        if corpus.embeddings is None or query_embedding is None:
            raise ValueError("encoder ranking needs the corpus's and the question's embeddings")
        scores = corpus.embeddings @ query_embedding
    else:
        scores = corpus.bm25(question.text)
    skip = set(exclude)
    out: list[int] = []
    for i in np.argsort(-scores, kind="stable").tolist():
        paragraph = corpus.paragraphs[i]
        if paragraph.article == article or i in skip or holds_answer(paragraph, question):
            continue
        out.append(i)
        if len(out) == k:
            break
    return out

