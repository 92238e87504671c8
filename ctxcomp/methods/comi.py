"""COMI fine stage: merge the LLM's token embeddings into fewer slots by Marginal Information Gain.

Stages: tokenize (downstream LLM) and split into sentences (the groups) ->
group MIG (sentence-encoder relevance to the query minus the highest
similarity to a sentence of another document) -> slots per group (the
budget spread over groups by token count x exp(MIG / temperature): high-MIG
regions keep finer detail; groups left without a slot are dropped) -> merge
(each group cut into that many contiguous runs; each run becomes one slot,
the softmax-weighted sum of its token embeddings, weight = relevance of the
token to the query minus its highest similarity to another token of the run,
rescaled to the run's mean norm) -> soft tokens in original order.

Training-free: SmolLM2 was never tuned to read merged slots (COMI fine-tunes
its LLM), so expect the answer quality bench/soft_quality.py reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ctxcomp.embedding import cross_document_redundancy, query_and_sentences
from ctxcomp.errors import InvalidRequest
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, Output, SelectiveOptions, share
from ctxcomp.selection import empty_results, token_budget
from ctxcomp.soft import SoftTokens
from ctxcomp.text import split_sentences


@dataclass(frozen=True)
class ComiConfig(SelectiveOptions):
    rate: float = share(1 / 16, "slots per input token when the request sets no target")
    redundancy_weight: float = field(default=1.0, metadata={"help": "MIG = relevance - weight * redundancy"})
    group_temperature: float = field(default=0.1, metadata={"help": "softmax temperature of the slot split over groups"})
    token_temperature: float = field(default=0.1, metadata={"help": "softmax temperature of the merge weights in a slot"})

    def check(self) -> None:
        for name in ("group_temperature", "token_temperature"):
            if not 0.0 < getattr(self, name) <= 10.0:
                raise InvalidRequest(f"options.{name}", f"must be in (0, 10], got {getattr(self, name)}")
        if not 0.0 <= self.redundancy_weight <= 10.0:
            raise InvalidRequest("options.redundancy_weight", f"must be in [0, 10], got {self.redundancy_weight}")


@dataclass(frozen=True)
class Group:
    """One sentence's LLM tokens."""

    document: int
    token_ids: list[int]


class ComiMerge(MethodBase):
    name: ClassVar[str] = "comi"
    description: ClassVar[str] = "COMI token merging: MIG-weighted slots of LLM token embeddings (soft tokens)"
    requires: ClassVar[tuple[str, ...]] = ("sentence_encoder", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    output: ClassVar[Output] = "vectors"
    presets: ClassVar[dict[str, ComiConfig]] = {"default": ComiConfig()}

    def compress(self, item: MethodItem) -> MethodOutput:
        request, config = item.request, item.config
        llm = self.hub.llm()
        split = split_sentences(self.hub.spacy(), [d.text for d in request.documents])
        groups = sentence_groups(llm.tokenizer, split)
        query, sentences = query_and_sentences(self.hub, request.query, split)
        mig = group_mig(query, sentences, np.asarray([g.document for g in groups]), config.redundancy_weight)
        slots_total = max(1, token_budget(request, config.rate, item.tokens_before))
        slots = allocate_slots(mig, np.asarray([len(g.token_ids) for g in groups]), slots_total, config.group_temperature)
        table = llm.model.get_input_embeddings().weight.detach()  # [V, H]
        query_vector = table[llm.tokenizer(request.query, add_special_tokens=False)["input_ids"]].mean(0)
        merged, owners = [], []
        for group, n in zip(groups, slots.tolist()):
            for run in np.array_split(np.arange(len(group.token_ids)), n) if n else []:
                merged.append(merge_run(table[[group.token_ids[i] for i in run]], query_vector, config.token_temperature))
                owners.append(group.document)
        vectors = torch.stack(merged) if merged else torch.zeros(0, table.shape[1])
        soft = SoftTokens("comi", vectors, llm.fingerprint, llm.path.name, tuple(request.documents[o].id for o in owners))
        per_doc = np.bincount(np.asarray(owners, np.int64), minlength=len(request.documents)).tolist()
        documents = empty_results(request, item.tokens_before, per_doc, [0.0] * len(per_doc))
        note = f"{len(owners)} COMI slots (soft_tokens) from {sum(len(g.token_ids) for g in groups)} tokens"
        return MethodOutput(documents, note, soft)


def sentence_groups(tokenizer, split) -> list[Group]:
    """Every non-empty sentence's LLM token ids, with its document, in original order.
    Documents without sentences (emptied by an earlier chain stage) add none."""
    return [
        Group(d, ids)
        for d, s in enumerate(split)
        if len(s)
        for ids in tokenizer(list(s.strings()), add_special_tokens=False)["input_ids"]
        if ids
    ]


def group_mig(query: np.ndarray, sentences: np.ndarray, document: np.ndarray, redundancy_weight: float) -> np.ndarray:
    """[G] relevance to the query minus the highest similarity to a sentence of another document.

    query: [E], sentences: [G, E] L2-normalised; document: [G] owner of each sentence.
    """
    if not len(sentences):
        return np.zeros(0)
    return sentences @ query - redundancy_weight * cross_document_redundancy(sentences @ sentences.T, document)


def allocate_slots(mig: np.ndarray, sizes: np.ndarray, total: int, temperature: float) -> np.ndarray:
    """[G] slots per group, summing to min(total, sizes.sum()), each at most its size.

    Share of group g ~ sizes[g] * exp(mig[g] / temperature); largest remainders
    round; what a full group cannot take goes to the next best groups.
    """
    slots = np.zeros(len(sizes), np.int64)
    total = int(min(total, sizes.sum()))
    weight = sizes * np.exp((mig - (mig.max() if len(mig) else 0.0)) / temperature)
    while slots.sum() < total:
        left = total - int(slots.sum())
        room = sizes - slots
        share = np.where(room > 0, weight, 0.0)
        if share.sum() <= 0:  # weights underflowed: split evenly over groups with room
            share = (room > 0).astype(float)
        ideal = share / share.sum() * left
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        remainder = np.where(room - add > 0, ideal - np.floor(ideal), -1.0)
        for g in np.argsort(-remainder, kind="stable")[: left - int(add.sum())]:
            if remainder[g] >= 0:
                add[g] += 1
        slots += add
    return slots


def merge_run(tokens: torch.Tensor, query: torch.Tensor, temperature: float) -> torch.Tensor:
    """[H] one slot from a run of token embeddings ([n, H]) by MIG weights, at the run's mean norm."""
    if len(tokens) == 1:
        return tokens[0].clone()
    unit = torch.nn.functional.normalize(tokens, dim=1)
    relevance = unit @ torch.nn.functional.normalize(query, dim=0)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1.0)
    weights = torch.softmax((relevance - similarity.max(dim=1).values) / temperature, dim=0)
    slot = weights @ tokens
    return slot * (tokens.norm(dim=1).mean() / slot.norm().clamp_min(1e-8))
