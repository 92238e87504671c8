"""RECOMP extractive (Xu et al., 2024): the sentences closest to the query under a dual encoder.

Stages: split (spaCy) -> embed query and sentences (the shipped sentence
encoder) -> top-k by inner product (faiss once the candidate set is large) ->
fit the token budget -> render in original order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ctxcomp.embedding import keep_most_similar
from ctxcomp.errors import InvalidRequest
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, SelectiveOptions, share
from ctxcomp.selection import token_budget


@dataclass(frozen=True)
class RecompExtractiveConfig(SelectiveOptions):
    rate: float = share(0.33, "kept share of tokens when the request sets no target")
    top_k: int = field(default=0, metadata={"help": "keep at most this many sentences (0 = as many as the budget holds)"})
    faiss_min_candidates: int = field(
        default=2048, metadata={"help": "use a faiss inner-product index from this many sentences on"}
    )

    def check(self) -> None:
        if self.top_k < 0:
            raise InvalidRequest("options.top_k", f"must be >= 0, got {self.top_k}")
        if self.faiss_min_candidates < 1:
            raise InvalidRequest("options.faiss_min_candidates", f"must be positive, got {self.faiss_min_candidates}")


class RecompExtractive(MethodBase):
    name: ClassVar[str] = "recomp_extractive"
    description: ClassVar[str] = "RECOMP extractive: top sentences by dual-encoder similarity to the query"
    requires: ClassVar[tuple[str, ...]] = ("sentence_encoder", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, RecompExtractiveConfig]] = {"default": RecompExtractiveConfig()}

    def compress(self, item: MethodItem) -> MethodOutput:
        request, config = item.request, item.config
        budget = token_budget(request, config.rate, item.tokens_before)
        documents = keep_most_similar(self.hub, request, budget, item.tokens_before, config.top_k, config.faiss_min_candidates)
        return MethodOutput(documents)
