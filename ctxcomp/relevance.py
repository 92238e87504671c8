"""Selective augmentation: judge whether any document is relevant to the query at all.

RECOMP returns an empty summary when nothing in the retrieved documents helps,
so the downstream LLM answers from its own knowledge instead of from noise.
Every method can do the same (its config's `selective` option): before the
method runs, each document is scored by its sentence closest to the query
(cosine under the sentence encoder), and if no document reaches the threshold
(calibrated on SQuAD training articles, models/sentence_classifier/config.json)
the request comes back empty with a note giving the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctxcomp import sentences as sentence_split
from ctxcomp.hub import ModelHub
from ctxcomp.methods import MethodOutput
from ctxcomp.types import CompressRequest, DocumentResult


@dataclass(frozen=True)
class Verdict:
    relevant: bool
    document_scores: np.ndarray  # [D] best query-sentence cosine per document
    threshold: float


def judge(hub: ModelHub, request: CompressRequest, threshold: float = -1.0) -> Verdict:
    """Score each document by its most query-relevant sentence; threshold < 0 = calibrated."""
    classifier = hub.sentence_classifier()
    if threshold < 0:
        threshold = classifier.relevance_threshold
    split = sentence_split.split(hub.spacy(), [d.text for d in request.documents])
    scores = classifier.best_similarity(request.query, [s.strings() for s in split])
    return Verdict(bool((scores > threshold).any()), scores, threshold)


def empty_output(request: CompressRequest, verdict: Verdict, tokens_before: list[int] | tuple[int, ...]) -> MethodOutput:
    """Every document dropped, with the reason in the note and each document's score."""
    documents = tuple(
        DocumentResult(
            id=d.id, text="", kept_spans=(), tokens_before=before, tokens_after=0, score=float(score),
            metadata=dict(d.metadata),
        )
        for d, before, score in zip(request.documents, tokens_before, verdict.document_scores)
    )
    best = float(verdict.document_scores.max()) if len(verdict.document_scores) else 0.0
    note = (
        f"selective augmentation: no document is relevant to the query "
        f"(best sentence score {best:.3f} <= threshold {verdict.threshold:.3f}); context left empty"
    )
    return MethodOutput(documents, note)
