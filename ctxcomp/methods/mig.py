"""MIG selection: the coarse stage of COMI (Marginal Information Gain).

MIG of a unit = its relevance to the query (the relevance model's sentence
head) minus its redundancy: the highest embedding similarity to any unit in
another group (a fact stated twice gains once). Units are sentences, groups
are documents.

Stages: score (ctxcomp.relevance) -> embed (sentence encoder) -> drop near-duplicate documents
(the less relevant copy) -> group budgets (the token budget spread over
documents by softmax of their best units' MIG: high-MIG groups keep more) ->
greedy selection within each group's budget by dynamic MIG (relevance minus
redundancy with what is already chosen; near-duplicates of a chosen sentence
are never taken) -> fit the budget exactly -> render in original order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ctxcomp import relevance
from ctxcomp.embedding import cross_document_redundancy, per_document, query_and_sentences
from ctxcomp.errors import InvalidRequest
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, SelectiveOptions, share
from ctxcomp.selection import keep_sentences, split_budget, token_budget


@dataclass(frozen=True)
class MigConfig(SelectiveOptions):
    rate: float = share(0.33, "kept share of tokens when the request sets no target")
    redundancy_weight: float = field(default=0.5, metadata={"help": "MIG = relevance - weight * redundancy"})
    group_temperature: float = field(
        default=0.1, metadata={"help": "softmax temperature of the group budget split (lower = more to the best group)"}
    )
    duplicate_similarity: float = field(
        default=0.92, metadata={"help": "units (sentences, documents) at least this similar count as duplicates"}
    )

    def check(self) -> None:
        if not 0.0 <= self.redundancy_weight <= 10.0:
            raise InvalidRequest("options.redundancy_weight", f"must be in [0, 10], got {self.redundancy_weight}")
        if not 0.0 < self.group_temperature <= 10.0:
            raise InvalidRequest("options.group_temperature", f"must be in (0, 10], got {self.group_temperature}")
        if not 0.0 < self.duplicate_similarity <= 1.0:
            raise InvalidRequest("options.duplicate_similarity", f"must be in (0, 1], got {self.duplicate_similarity}")


@dataclass(frozen=True)
class Units:
    """Sentences of a request as MIG sees them."""

    relevance: np.ndarray  # [U] cosine to the query
    similarity: np.ndarray  # [U, U] cosine between units
    group: np.ndarray  # [U] document index
    cost: np.ndarray  # [U] downstream-LLM tokens


class MigSelection(MethodBase):
    name: ClassVar[str] = "mig"
    description: ClassVar[str] = (
        "COMI coarse stage: marginal information gain (relevance minus redundancy), group budgets, duplicates dropped"
    )
    requires: ClassVar[tuple[str, ...]] = ("relevance", "sentence_encoder", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, MigConfig]] = {"default": MigConfig()}

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        scored = relevance.scores_of(self.hub, items)
        return [self._select(item, scores) for item, scores in zip(items, scored)]

    def _select(self, item: MethodItem, scores: Sequence[relevance.DocumentScores]) -> MethodOutput:
        request, config, tokens_before = item.request, item.config, item.tokens_before
        split = [d.sentences for d in scores]
        _, sentences = query_and_sentences(self.hub, request.query, split)
        units = Units(
            relevance=np.concatenate([relevance.sigmoid(d.sentence_logits) for d in scores]) if scores else np.zeros(0),
            similarity=sentences @ sentences.T,
            group=np.repeat(np.arange(len(split)), [len(s) for s in split]),
            cost=np.asarray(self.hub.count_tokens([t for s in split for t in s.strings()]), np.int64),
        )
        budget = token_budget(request, config.rate, tokens_before)
        allowed = ~duplicate_documents(units, sentences, config.duplicate_similarity)
        budgets = group_budgets(units, allowed, budget, config)
        order = greedy_mig(units, allowed, budgets, config)
        priority = np.full(len(units.group), -np.inf)
        priority[order] = len(order) - np.arange(len(order))  # chosen first = kept first
        document_scores = [np.asarray([d.probability]) for d in scores]
        documents = keep_sentences(self.hub, request, split, per_document(priority, split), budget, tokens_before, document_scores)
        dropped = len(set(units.group[~allowed].tolist()))
        note = f"{dropped} near-duplicate document(s) dropped" if dropped else ""
        return MethodOutput(documents, note)


def duplicate_documents(units: Units, embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """[U] bool: units of documents that near-duplicate a more relevant document.

    Document embedding = normalised mean of its sentence embeddings ([U, E] input);
    of two documents at least `threshold` similar, the less relevant goes whole.
    """
    n_groups = int(units.group.max()) + 1 if len(units.group) else 0
    centroids = np.zeros((n_groups, embeddings.shape[1] if embeddings.ndim == 2 else 0))
    np.add.at(centroids, units.group, embeddings)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-8
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, units.group, units.relevance)
    dropped: set[int] = set()
    for g in np.argsort(-best, kind="stable"):
        if g in dropped:
            continue
        twins = np.flatnonzero(centroids @ centroids[g] >= threshold)
        dropped.update(int(t) for t in twins if t != g and int(t) not in dropped)
    return np.isin(units.group, sorted(dropped))


def group_budgets(units: Units, allowed: np.ndarray, budget: int, config: MigConfig) -> np.ndarray:
    """[G] token budget per document: softmax over each group's best static MIG, capped at
    the group's size, with what a capped group cannot use passed on to the others."""
    n_groups = int(units.group.max()) + 1 if len(units.group) else 0
    redundancy = cross_document_redundancy(units.similarity, units.group, allowed)
    mig = units.relevance - config.redundancy_weight * redundancy
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, units.group[allowed], mig[allowed])
    size = np.bincount(units.group[allowed], units.cost[allowed], minlength=n_groups).astype(float)
    weights = np.where(np.isfinite(best), np.exp((best - best[np.isfinite(best)].max(initial=0)) / config.group_temperature), 0.0)
    return split_budget(weights, size, budget)


def greedy_mig(units: Units, allowed: np.ndarray, budgets: np.ndarray, config: MigConfig) -> np.ndarray:
    """Unit indices in the order chosen: each step takes the allowed unit with the highest
    relevance - weight * (max similarity to already chosen units) that fits its group's budget."""
    left = budgets.astype(float).copy()
    redundancy = np.zeros(len(units.relevance))
    candidate = allowed.copy()
    chosen: list[int] = []
    while candidate.any():
        fits = candidate & (units.cost <= left[units.group] + 0.5)
        if not fits.any():
            break
        mig = np.where(fits, units.relevance - config.redundancy_weight * redundancy, -np.inf)
        best = int(np.argmax(mig))
        chosen.append(best)
        left[units.group[best]] -= units.cost[best]
        candidate[best] = False
        redundancy = np.maximum(redundancy, units.similarity[best])
        candidate &= units.similarity[best] < config.duplicate_similarity
    return np.asarray(chosen, np.int64)
