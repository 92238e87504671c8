"""EXIT: context-aware extractive compression (Hwang et al., 2024).

Stages: split (spaCy sentences) -> classify (every sentence of the request in
one batched pass, each seen with its neighbours and document) -> keep the
sentences whose probability exceeds the threshold (adaptive: how many follows
the scores) -> optional token budget on top -> render in original order.
EXIT's reference code runs one classifier forward per sentence; here the
encoder embeds all sentences of a request in one batch and the head scores all
rows at once.
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
class ExitConfig(SelectiveOptions):
    threshold: float = field(
        default=-1.0, metadata={"help": "keep sentences whose probability exceeds this (-1 = calibrated, 90% answer recall)"}
    )
    min_sentences: int = field(
        default=1, metadata={"help": "keep at least this many best sentences even below the threshold"}
    )
    rate: float = field(
        default=1.0, metadata={"help": "token cap as a share of the input when the request sets no target (1 = adaptive only)"}
    )

    def check(self) -> None:
        if not (self.threshold == -1.0 or 0.0 <= self.threshold <= 1.0):
            raise InvalidRequest("options.threshold", f"must be in [0, 1] or -1, got {self.threshold}")
        if self.min_sentences < 0:
            raise InvalidRequest("options.min_sentences", f"must be >= 0, got {self.min_sentences}")
        if not 0.0 < self.rate <= 1.0:
            raise InvalidRequest("options.rate", f"must be in (0, 1], got {self.rate}")


PRESETS = {
    "default": ExitConfig(),
    "strict": ExitConfig(threshold=0.5),
}


class Exit:
    name: ClassVar[str] = "exit"
    description: ClassVar[str] = (
        "context-aware sentence classification (EXIT): keeps the sentences useful for the query, adaptive count"
    )
    config_type: ClassVar[type] = ExitConfig
    requires: ClassVar[tuple[str, ...]] = ("sentence_classifier", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, ExitConfig]] = PRESETS

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def compress(self, request: CompressRequest, config: ExitConfig, tokens_before: Sequence[int]) -> MethodOutput:
        split = sentence_split.split(self.hub.spacy(), [d.text for d in request.documents])
        classifier = self.hub.sentence_classifier()
        probs = classifier.probabilities(request.query, [s.strings() for s in split])
        threshold = classifier.threshold if config.threshold < 0 else config.threshold
        priority = adaptive_priority(probs, threshold, config.min_sentences)
        budget = token_budget(request, config.rate, tokens_before)
        documents = sentence_split.keep_sentences(self.hub, request, split, priority, budget, tokens_before, probs)
        return MethodOutput(documents)


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
