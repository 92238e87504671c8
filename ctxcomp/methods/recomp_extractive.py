"""RECOMP extractive (Xu et al., 2024): the sentences closest to the query under a dual encoder.

Stages: split (spaCy) -> embed query and sentences (the shipped sentence
encoder) -> top-k by inner product (faiss once the candidate set is large) ->
fit the token budget -> render in original order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ctxcomp import sentences as sentence_split
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.methods import MethodOutput, SelectiveOptions, token_budget
from ctxcomp.types import CompressRequest


@dataclass(frozen=True)
class RecompExtractiveConfig(SelectiveOptions):
    rate: float = field(default=0.33, metadata={"help": "kept share of tokens when the request sets no target"})
    top_k: int = field(default=0, metadata={"help": "keep at most this many sentences (0 = as many as the budget holds)"})
    faiss_min_candidates: int = field(
        default=2048, metadata={"help": "use a faiss inner-product index from this many sentences on"}
    )

    def check(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise InvalidRequest("options.rate", f"must be in (0, 1], got {self.rate}")
        if self.top_k < 0:
            raise InvalidRequest("options.top_k", f"must be >= 0, got {self.top_k}")
        if self.faiss_min_candidates < 1:
            raise InvalidRequest("options.faiss_min_candidates", f"must be positive, got {self.faiss_min_candidates}")


PRESETS = {"default": RecompExtractiveConfig(), "top3": RecompExtractiveConfig(rate=1.0, top_k=3)}


class RecompExtractive:
    name: ClassVar[str] = "recomp_extractive"
    description: ClassVar[str] = "RECOMP extractive: top sentences by dual-encoder similarity to the query"
    config_type: ClassVar[type] = RecompExtractiveConfig
    requires: ClassVar[tuple[str, ...]] = ("sentence_encoder", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, RecompExtractiveConfig]] = PRESETS

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def compress(
        self, request: CompressRequest, config: RecompExtractiveConfig, tokens_before: Sequence[int]
    ) -> MethodOutput:
        split = sentence_split.split(self.hub.spacy(), [d.text for d in request.documents])
        flat = [t for s in split for t in s.strings()]
        embedded = embed(self.hub, [request.query, *flat])
        limit = config.top_k or len(flat)
        similarity = top_k_similarity(embedded[0], embedded[1:], limit, config.faiss_min_candidates)
        bounds = np.cumsum([0] + [len(s) for s in split])
        priority = [similarity[bounds[i] : bounds[i + 1]] for i in range(len(split))]
        budget = token_budget(request, config.rate, tokens_before)
        documents = sentence_split.keep_sentences(self.hub, request, split, priority, budget, tokens_before)
        return MethodOutput(documents)


def embed(hub: ModelHub, texts: list[str]) -> np.ndarray:
    """[N, 384] float32 L2-normalised sentence-encoder embeddings."""
    return hub.sentence_encoder().encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)


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
