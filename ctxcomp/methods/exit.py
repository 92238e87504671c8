"""EXIT: context-aware extractive compression (Hwang et al., 2024).

Stages: classify (the relevance model's sentence head: each sentence is read
inside its document window, next to the query, as EXIT's classifier reads it)
-> keep the sentences whose probability exceeds the threshold (adaptive: how
many follows the scores) -> optional token budget on top -> render in original
order. EXIT's reference code runs one classifier forward per sentence; here one
cross-encoder pass over each document window scores all its sentences, and the
windows of all requests of a batch share the encoder batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ctxcomp import relevance
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, SelectiveOptions, share
from ctxcomp.selection import keep_sentences, token_budget
from ctxcomp.types import DocumentResult


@dataclass(frozen=True)
class ExitConfig(SelectiveOptions):
    threshold: float = field(
        default=-1.0, metadata={"help": "keep sentences whose probability exceeds this (-1 = calibrated, 90% answer recall)"}
    )
    min_sentences: int = field(
        default=1, metadata={"help": "keep at least this many best sentences even below the threshold"}
    )
    rate: float = share(1.0, "token cap as a share of the input when the request sets no target (1 = adaptive only)")

    def check(self) -> None:
        if not (self.threshold == -1.0 or 0.0 <= self.threshold <= 1.0):
            raise InvalidRequest("options.threshold", f"must be in [0, 1] or -1, got {self.threshold}")
        if self.min_sentences < 0:
            raise InvalidRequest("options.min_sentences", f"must be >= 0, got {self.min_sentences}")


class Exit(MethodBase):
    name: ClassVar[str] = "exit"
    description: ClassVar[str] = (
        "context-aware sentence classification (EXIT): keeps the sentences useful for the query, adaptive count"
    )
    requires: ClassVar[tuple[str, ...]] = ("relevance", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, ExitConfig]] = {"default": ExitConfig()}

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        scored = relevance.scores_of(self.hub, items)
        calibrated = float(self.hub.relevance().meta["sentence_threshold"])
        return [MethodOutput(keep_useful(self.hub, item, scores, calibrated)) for item, scores in zip(items, scored)]


def keep_useful(
    hub: ModelHub, item: MethodItem, scores: Sequence[relevance.DocumentScores], calibrated: float
) -> tuple[DocumentResult, ...]:
    """The sentences the head finds useful (at least min_sentences), within the token cap;
    each document reports its relevance as its score."""
    config: ExitConfig = item.config
    probs = [relevance.sigmoid(d.sentence_logits) for d in scores]
    priority = adaptive_priority(probs, calibrated if config.threshold < 0 else config.threshold, config.min_sentences)
    budget = token_budget(item.request, config.rate, item.tokens_before)
    document_scores = [np.asarray([d.probability]) for d in scores]
    return keep_sentences(hub, item.request, [d.sentences for d in scores], priority, budget, item.tokens_before, document_scores)


def adaptive_priority(probs: Sequence[np.ndarray], threshold: float, min_sentences: int) -> list[np.ndarray]:
    """Per document [S_d]: the probability where a sentence may be kept, -inf where not.

    A sentence may be kept when it exceeds the threshold or is among the
    request's `min_sentences` best.
    """
    flat = np.concatenate(probs) if probs else np.zeros(0)
    allowed = flat > threshold
    allowed[np.argsort(-flat, kind="stable")[:min_sentences]] = True
    priority = np.where(allowed, flat, -np.inf)
    bounds = np.cumsum([0] + [len(p) for p in probs])
    return [priority[bounds[i] : bounds[i + 1]] for i in range(len(probs))]
