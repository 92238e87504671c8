"""Cascade: coarse-to-fine compression from one query-aware relevance pass.

Stages (after ctxcomp.relevance.score, one cross-encoder pass over every
(query, document window) of the batch):
1. rank: documents by relevance; a document whose relevance probability is
   below `drop_below` goes whole (the best one always stays);
2. split: the exact LLM-token budget over the documents left, in proportion
   to softmax(relevance / temperature) (LongLLMLingua's dynamic ratio), each
   capped at its size, what a capped document cannot use passed on;
3. keep sentences by the sentence head, each document within its budget;
4. cut the sentence at the budget's edge, as `edge_cut` says: to the best
   contiguous run of its clauses if at least a third of it fits, else not at all
   (`clause`; when the whole budget buys no sentence and no clause, the best
   document gets its best words); never (`sentence`); or to its best words by the token head
   (`words`: a word's priority is its sentence's logit plus `token_weight`
   times its own). Code blocks, JSON and links stay whole units;
5. fill: budget the relevant documents cannot use (all of them are whole) goes
   to the dropped ones, best first, in whole sentences that carry weight for the
   query (sentence probability at least the relevance model's calibrated
   `sentence_threshold`, EXIT's), or to nothing: a target is a cap, never a
   quota, and no fragment of an irrelevant document goes out as padding.
   `fill_budget` off keeps dropped documents out entirely. At tight budgets no
   relevant document is whole, and irrelevant documents stay out.

`sentence_floor` makes the target a cap inside relevant documents too: a
sentence whose probability is below it is never kept (the best document's best
sentence always may be), so a request whose relevant text is short gets a short
context instead of its budget filled with the documents' least bad sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar, Literal, Sequence

import numpy as np

from ctxcomp import relevance
from ctxcomp.cancellation import checkpoint
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, SelectiveOptions, share
from ctxcomp.selection import Selection, document_results, fit_budget, split_budget, token_budget, word_costs
from ctxcomp.text import TextSpans, unit_ids

EdgeCut = Literal["clause", "sentence", "words"]
CLAUSE_MIN_SHARE = 1 / 3  # of the edge sentence's tokens a clause cut must keep (one of three clauses), or the sentence goes
_CLAUSE_END = re.compile(r"[,;:)\]]$|^[-–—]$")  # a word that ends a clause (or is a dash)
# words that start a clause: subordinating and coordinating conjunctions, relative pronouns
_CLAUSE_START = frozenset(
    "because although though while whereas since unless until when whenever where which who whom whose "
    "but so yet after before if".split()
)


@dataclass(frozen=True)
class CascadeConfig(SelectiveOptions):
    rate: float = share(0.33, "kept share of tokens when the request sets no target")
    # temperature and token_weight: the best of a 3x3 grid on the relevance model's dev articles
    # (training/calibrate_relevance.py; figures in ctxcomp/models/relevance/config.json "cascade_dev").
    temperature: float = field(
        default=2.0, metadata={"help": "softmax temperature of the budget split over documents (relevance logits)"}
    )
    drop_below: float = field(
        default=0.05, metadata={"help": "documents whose relevance probability is below this go whole (never the best)"}
    )
    token_weight: float = field(
        default=0.3, metadata={"help": "word priority = sentence logit + this x token logit (0 = whole sentences only)"}
    )
    # edge_cut: chosen by reader F1 on the dev articles (bench/reader.py, bench/results/reader-dev-cascade.json:
    # clause 0.533 / 0.562 at 5x / 10x, words 0.517 / 0.523, sentence 0.513 / 0.502, 100 requests).
    edge_cut: EdgeCut = field(
        default="clause",
        metadata={"help": "the sentence at the budget's edge: clause (a contiguous part of it, or none), "
                          "sentence (none of it) or words (its best words)"},
    )
    # sentence_floor: off. On the dev articles a floor raises the reader's F1 and keeps answer strings
    # (bench/results/reader-dev-floor.json, quality-dev-floor*.json), but the sentence head learnt
    # single-sentence SQuAD answers: the second half of a two-part question scores below any useful
    # floor (docs/reader.md).
    sentence_floor: float = field(
        default=0.0,
        metadata={"help": "sentences whose relevance probability is below this are never kept (the best "
                          "document's best sentence always may be): the target becomes a cap"},
    )
    fill_budget: bool = field(
        default=True,
        metadata={"help": "budget the relevant documents leave once all are whole goes to dropped ones, best first"},
    )

    def check(self) -> None:
        if not 0.01 <= self.temperature <= 100.0:
            raise InvalidRequest("options.temperature", f"must be in [0.01, 100], got {self.temperature}")
        if not 0.0 <= self.drop_below < 1.0:
            raise InvalidRequest("options.drop_below", f"must be in [0, 1), got {self.drop_below}")
        if not 0.0 <= self.token_weight <= 10.0:
            raise InvalidRequest("options.token_weight", f"must be in [0, 10], got {self.token_weight}")
        if not 0.0 <= self.sentence_floor < 1.0:
            raise InvalidRequest("options.sentence_floor", f"must be in [0, 1), got {self.sentence_floor}")


class Cascade(MethodBase):
    name: ClassVar[str] = "cascade"
    description: ClassVar[str] = (
        "coarse-to-fine from one query-aware cross-encoder pass: rank documents, split the budget by "
        "relevance, keep sentences, cut tokens only where the budget demands"
    )
    requires: ClassVar[tuple[str, ...]] = ("relevance", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = True
    presets: ClassVar[dict[str, CascadeConfig]] = {"default": CascadeConfig()}

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        """All items' windows share one relevance pass; each item keeps its own config."""
        scored = relevance.scores_of(self.hub, items)
        return [compress_scored(self.hub, item, scores) for item, scores in zip(items, scored)]


def compress_scored(hub: ModelHub, item: MethodItem, scores: Sequence[relevance.DocumentScores]) -> MethodOutput:
    config: CascadeConfig = item.config
    scores = floored(scores, config.sentence_floor)
    budget = token_budget(item.request, config.rate, item.tokens_before)
    budgets = document_budgets(scores, item.tokens_before, budget, config)
    checkpoint()
    selections = [
        keep_in_document(hub, doc, int(doc_budget), config, before)
        for doc, doc_budget, before in zip(scores, budgets, item.tokens_before)
    ]
    spend_leftover(hub, scores, budgets, selections, budget, config, item.tokens_before)
    if budget > 0 and not any(sum(s.counts) for s in selections) and len(scores):
        # A budget too small for any sentence or clause: the best document's best words are
        # still better than no context at all.
        best = int(np.argmax([d.relevance for d in scores]))
        selections[best] = keep_in_document(hub, scores[best], budget, replace(config, edge_cut="words"),
                                            item.tokens_before[best])
    merged = Selection(
        [m for s in selections for m in s.masks],
        [r for s in selections for r in s.rendered],
        [c for s in selections for c in s.counts],
    )
    probabilities = [doc.probability for doc in scores]
    relevant = kept_documents(scores, config.drop_below)
    dropped = sum(1 for keep, s in zip(relevant, selections) if not keep and not sum(s.counts))
    note = f"{dropped} document(s) judged irrelevant and dropped whole" if dropped else ""
    return MethodOutput(document_results(item.request, merged, item.tokens_before, probabilities), note)


def floored(scores: Sequence[relevance.DocumentScores], floor: float) -> list[relevance.DocumentScores]:
    """The scores with every sentence below probability `floor` made unkeepable (logit -inf),
    except the best document's best sentence."""
    if floor <= 0.0 or not len(scores):
        return list(scores)
    best = int(np.argmax([d.relevance for d in scores]))
    out = []
    for d, doc in enumerate(scores):
        logits = doc.sentence_logits.astype(np.float64)
        below = relevance.sigmoid(logits) < floor
        if d == best and len(logits):
            below[int(np.argmax(logits))] = False
        out.append(replace(doc, sentence_logits=np.where(below, -np.inf, logits)) if below.any() else doc)
    return out


def document_budgets(
    scores: Sequence[relevance.DocumentScores], sizes: Sequence[int], budget: int, config: CascadeConfig
) -> np.ndarray:
    """[D] LLM-token budget per document: softmax(relevance / temperature) shares of the
    budget, capped at each document's size; irrelevant documents get none (the best always some)."""
    logits = np.asarray([d.relevance for d in scores], np.float64)
    keep = kept_documents(scores, config.drop_below)
    weights = np.where(keep, np.exp((logits - logits.max()) / config.temperature), 0.0)
    return split_budget(weights, np.asarray(sizes, np.float64), budget)


def kept_documents(scores: Sequence[relevance.DocumentScores], drop_below: float) -> np.ndarray:
    """[D] bool: documents relevant enough to keep; the best one always is."""
    logits = np.asarray([d.relevance for d in scores], np.float64)
    keep = relevance.sigmoid(logits) >= drop_below
    if len(keep):
        keep[int(np.argmax(logits))] = True
    return keep


def spend_leftover(
    hub: ModelHub, scores: Sequence[relevance.DocumentScores], budgets: np.ndarray, selections: list[Selection],
    budget: int, config: CascadeConfig, sizes: Sequence[int],
) -> None:
    """Give the tokens the per-document fits left unspent (whole units rarely fill a budget
    exactly) to the kept documents in relevance order, refitting each with its share plus them;
    with `fill_budget`, once every kept document is whole, what is left goes to the dropped
    documents, best first, in whole sentences the sentence head finds relevant only."""
    by_relevance = np.argsort([-doc.relevance for doc in scores], kind="stable")
    kept = [d for d in by_relevance if budgets[d] >= 1]
    grow(hub, scores, selections, budget, config, sizes, kept)
    if config.fill_budget and all(sum(selections[d].counts) >= sizes[d] for d in kept):
        dropped = [d for d in by_relevance if budgets[d] < 1]
        least = float(hub.relevance().meta["sentence_threshold"])
        grow(hub, scores, selections, budget, config, sizes, dropped, least_sentence_probability=least)


def grow(
    hub: ModelHub, scores: Sequence[relevance.DocumentScores], selections: list[Selection], budget: int,
    config: CascadeConfig, sizes: Sequence[int], order: Sequence[int], least_sentence_probability: float | None = None,
) -> None:
    """Refit the documents of `order`, in turn, with what they keep plus what the budget has left.
    With `least_sentence_probability` (documents judged irrelevant), only whole sentences whose
    keep probability reaches it: no fragments, no filler."""
    spent = [sum(s.counts) for s in selections]
    left = budget - sum(spent)  # kept as a running total: a page's nodes are thousands of documents
    for d in order:
        if left <= 0:
            return
        if spent[d] < sizes[d]:
            grown = keep_in_document(hub, scores[d], spent[d] + left, config, sizes[d], least_sentence_probability)
            if sum(grown.counts) > spent[d]:
                left -= sum(grown.counts) - spent[d]
                selections[d], spent[d] = grown, sum(grown.counts)


def keep_in_document(
    hub: ModelHub, doc: relevance.DocumentScores, budget: int, config: CascadeConfig, size: int,
    least_sentence_probability: float | None = None,
) -> Selection:
    """The best units of one document within `budget` tokens: sentences by the sentence head,
    the sentence at the budget's edge cut as `config.edge_cut` says (edge_cut "sentence" cuts
    none). With `least_sentence_probability`, only whole sentences at least that probable."""
    checkpoint()  # a page's nodes are thousands of documents: a place to stop or give way
    if not len(doc.words):
        return fit_budget([doc.words], np.zeros(0), hub.count_tokens, 0, total_tokens=0)
    sentence_logits = doc.sentence_logits if len(doc.sentence_logits) else np.zeros(1)
    sentence_priority = sentence_logits[doc.sentence_of_word].astype(np.float64)
    fit = partial(fit_budget, [doc.words], total_tokens=size, count_pieces=hub.count_piece_tokens)
    if least_sentence_probability is not None:
        weighty = relevance.sigmoid(sentence_logits) >= least_sentence_probability
        allowed = np.where(weighty[doc.sentence_of_word], sentence_priority, -np.inf)
        return fit(allowed, hub.count_tokens, budget, units=doc.sentence_of_word)
    if config.edge_cut == "words":
        priority = sentence_priority + config.token_weight * doc.word_logits
        return fit(priority, hub.count_tokens, budget, units=unit_ids(doc.words))
    if config.edge_cut == "sentence" or budget >= size:
        return fit(sentence_priority, hub.count_tokens, budget, units=doc.sentence_of_word)
    clause = edge_clause(hub, doc, sentence_logits, budget)
    units = np.where(clause, -1, doc.sentence_of_word)  # the clause is a unit of its own, the rest of its sentence too
    units = np.cumsum(np.r_[True, units[1:] != units[:-1]]) - 1
    in_clause_sentence = np.isin(doc.sentence_of_word, doc.sentence_of_word[clause])
    allowed = np.where(in_clause_sentence & ~clause, -np.inf, sentence_priority)
    return fit(allowed, hub.count_tokens, budget, units=units)


def edge_clause(hub: ModelHub, doc: relevance.DocumentScores, sentence_logits: np.ndarray, budget: int) -> np.ndarray:
    """[W] bool: the clause kept of the sentence at the budget's edge (none kept: all False).

    Sentences are taken whole in the sentence head's order while they fit; the first that
    does not is the edge. Its best contiguous run of clauses (summed token logits) that fits
    what is left and holds at least CLAUSE_MIN_SHARE of its tokens is kept; otherwise none of it.
    """
    costs = word_costs([doc.words], hub.count_piece_tokens)
    owner = doc.sentence_of_word
    sentence_costs = np.bincount(owner, costs, minlength=len(sentence_logits))
    left = budget
    out = np.zeros(len(owner), bool)
    for sentence in np.argsort(-sentence_logits, kind="stable"):
        if sentence_logits[sentence] == -np.inf:  # below the sentence floor: never kept, not even in part
            return out
        if sentence_costs[sentence] <= left:
            left -= sentence_costs[sentence]
            continue
        in_sentence = np.flatnonzero(owner == sentence)
        if len(in_sentence):
            least = CLAUSE_MIN_SHARE * float(sentence_costs[sentence])
            run = best_run(clause_spans(doc.words, in_sentence), costs, doc.word_logits, least, left)
            if run is not None:
                out[run[0] : run[1]] = True
        return out
    return out


def clause_spans(words: TextSpans, indices: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) word ranges of the clauses of one sentence (words `indices`, contiguous):
    a clause ends at a word ending in , ; : ) ] or at a dash, or before a conjunction or
    relative pronoun (because, which, but...)."""
    strings = words.strings()
    spans, start = [], int(indices[0])
    for i in indices.tolist():
        if i > start and strings[i].lower() in _CLAUSE_START:
            spans.append((start, i))
            start = i
        if _CLAUSE_END.search(strings[i]):
            spans.append((start, i + 1))
            start = i + 1
    if start <= int(indices[-1]):
        spans.append((start, int(indices[-1]) + 1))
    return spans


def best_run(
    clauses: list[tuple[int, int]], costs: np.ndarray, logits: np.ndarray, least: float, most: int
) -> tuple[int, int] | None:
    """The [start, end) word range of consecutive clauses with the highest summed logit among
    those that cost between `least` and `most` tokens, or None if none does."""
    best, best_score = None, -np.inf
    for a in range(len(clauses)):
        for b in range(a, len(clauses)):
            start, end = clauses[a][0], clauses[b][1]
            cost = costs[start:end].sum()
            if cost > most:
                break
            if cost < least:
                continue
            score = float(logits[start:end].sum())
            if score > best_score:
                best, best_score = (start, end), score
    return best
