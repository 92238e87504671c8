"""Sentence-encoder embeddings and the similarity arithmetic methods share.

RECOMP ranks sentences by similarity to the query; MIG and COMI subtract
redundancy, a unit's highest similarity to a unit of another document.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ctxcomp.cancellation import checkpoint
from ctxcomp.hub import ModelHub
from ctxcomp.selection import keep_sentences
from ctxcomp.text import TextSpans, split_sentences
from ctxcomp.types import CompressRequest, DocumentResult


EMBED_CHUNK = 256  # texts per encode call: the cancellation checkpoint's granularity


def embed(hub: ModelHub, texts: list[str]) -> np.ndarray:
    """[N, E] float32 L2-normalised sentence-encoder embeddings."""
    encoder = hub.sentence_encoder()
    parts = []
    for start in range(0, len(texts), EMBED_CHUNK):
        checkpoint()
        parts.append(encoder.encode(texts[start : start + EMBED_CHUNK], convert_to_numpy=True, normalize_embeddings=True, batch_size=64))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)


def query_and_sentences(hub: ModelHub, query: str, split: Sequence[TextSpans]) -> tuple[np.ndarray, np.ndarray]:
    """([E] query, [sum S_d, E] sentences) embeddings, documents' sentences concatenated."""
    embedded = embed(hub, [query, *[t for s in split for t in s.strings()]])
    return embedded[0], embedded[1:]


def per_document(values: np.ndarray, split: Sequence[TextSpans]) -> list[np.ndarray]:
    """A flat [sum S_d] array cut back into one [S_d] array per document."""
    bounds = np.cumsum([0] + [len(s) for s in split])
    return [values[bounds[i] : bounds[i + 1]] for i in range(len(split))]


def cross_document_redundancy(similarity: np.ndarray, group: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """[U] each unit's highest similarity to an (allowed) unit of another group, floored at 0.

    similarity: [U, U]; group: [U] document of each unit; allowed: [U] bool, units
    that count as others (default all). A fact stated in two documents is redundant in both.
    """
    if not len(group):
        return np.zeros(0)
    other = group[:, None] != group[None, :]
    if allowed is not None:
        other &= allowed[None, :]
    return np.maximum(np.where(other, similarity, -1.0).max(axis=1), 0.0)


def top_k_similarity(query: np.ndarray, candidates: np.ndarray, k: int, faiss_from: int) -> np.ndarray:
    """[N] cosine similarity for the k nearest candidates, -inf for the rest.

    query: [E], candidates: [N, E], both L2-normalised. From `faiss_from`
    candidates on, an exact faiss inner-product index does the search.
    """
    n = len(candidates)
    out = np.full(n, -np.inf)
    if n == 0 or k == 0:
        return out
    k = min(k, n)
    if n >= faiss_from:
        import faiss

        index = faiss.IndexFlatIP(candidates.shape[1])
        index.add(np.ascontiguousarray(candidates, dtype=np.float32))
        scores, ids = index.search(np.ascontiguousarray(query[None], dtype=np.float32), k)
        out[ids[0]] = scores[0]
        return out
    similarity = candidates @ query
    nearest = np.argsort(-similarity, kind="stable")[:k]
    out[nearest] = similarity[nearest]
    return out


def keep_most_similar(
    hub: ModelHub, request: CompressRequest, budget: int, tokens_before: Sequence[int],
    top_k: int = 0, faiss_from: int = 2048,
) -> tuple[DocumentResult, ...]:
    """The sentences closest to the query (at most top_k, 0 = any number) within `budget`
    LLM tokens, in original order (RECOMP's extractive selection)."""
    split = split_sentences(hub.spacy(), [d.text for d in request.documents])
    query, sentences = query_and_sentences(hub, request.query, split)
    similarity = top_k_similarity(query, sentences, top_k or len(sentences), faiss_from)
    return keep_sentences(hub, request, split, per_document(similarity, split), budget, tokens_before)
