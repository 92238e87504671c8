"""Lexical relevance (Okapi BM25): a first ranking where a model pass over every candidate would
cost more than the candidates are worth (a page of ten thousand blocks, say)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

_TERM = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    return _TERM.findall(text.lower())


def bm25(query: str, texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 score of each text for the query's terms, the texts being the collection (their own
    document frequencies and mean length)."""
    counts = [Counter(terms(text)) for text in texts]
    scores = np.zeros(len(texts))
    if not counts:
        return scores
    lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
    norm = k1 * (1.0 - b + b * lengths / max(float(lengths.mean()), 1.0))
    for term in set(terms(query)):
        tf = np.array([c.get(term, 0) for c in counts], dtype=np.float64)
        df = int(np.count_nonzero(tf))
        if df:
            idf = math.log(1.0 + (len(texts) - df + 0.5) / (df + 0.5))
            scores += idf * tf * (k1 + 1.0) / (tf + norm)
    return scores
