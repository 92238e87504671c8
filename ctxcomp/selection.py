"""Selection shared by every text method: an exact LLM-token budget, units kept by
priority, and the kept units rendered from the original text.

A method scores units (words, sentences, structure blocks); `fit_budget` keeps
the highest-priority units of all documents within the budget, counted in the
downstream LLM's tokens and never exceeded; `render` joins the kept runs of
the original text. `keep_sentences` does the same with whole sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ctxcomp.hub import ModelHub
from ctxcomp.text import TextSpans, segment_words, sentence_of_word
from ctxcomp.types import CompressRequest, DocumentResult, Span, WordLabel

_MAX_FIT_ROUNDS = 8


def token_budget(request: CompressRequest, preset_rate: float, tokens_before: Sequence[int]) -> int:
    """The request's budget in downstream-LLM tokens over all documents: target_tokens,
    else its rate, else the method preset's rate, times the input's tokens."""
    total = int(sum(tokens_before))
    if request.target_tokens is not None:
        return min(request.target_tokens, total)
    rate = request.rate if request.rate is not None else preset_rate
    return int(total * rate)


def split_budget(weights: np.ndarray, sizes: np.ndarray, budget: float) -> np.ndarray:
    """[G] budget per group in proportion to `weights`, each capped at its size, with what a
    capped group cannot use passed on to the others (water-filling). weights, sizes: [G] >= 0."""
    budgets = np.zeros(len(sizes))
    left = float(budget)
    open_groups = sizes > 0
    while left > 0.5 and open_groups.any():
        share = weights * open_groups
        if share.sum() <= 0:
            break
        offer = left * share / share.sum()
        take = np.minimum(offer, sizes - budgets)
        budgets += take
        left -= take.sum()
        open_groups &= budgets < sizes - 0.5
    return budgets


@dataclass(frozen=True)
class Selection:
    masks: list[np.ndarray]  # per document, [W_d] bool
    rendered: list[tuple[str, tuple[Span, ...]]]  # per document: text and kept spans
    counts: list[int]  # per document: downstream-LLM tokens of the text


def fit_budget(
    words: list[TextSpans],
    priority: np.ndarray,
    count_tokens: Callable[[Sequence[str]], list[int]],
    budget: int,
    *,
    total_tokens: int,
    units: np.ndarray | None = None,
    after_select: Callable[[np.ndarray], np.ndarray] | None = None,
    count_pieces: Callable[[Sequence[str]], list[int]] | None = None,
) -> Selection:
    """Keep the highest-priority units of all documents within `budget` LLM tokens, never above.

    priority: [sum W_d] float per word, documents concatenated; +inf marks
    must-keep words, -inf words that may not be kept. units: [sum W_d] int,
    increasing; words of one unit (a code block, a JSON value...) are kept or
    dropped together, by their mean priority. Word costs give a first
    selection; the rendered texts are then counted for real (BPE merges across
    word boundaries differ) and the lowest-priority units dropped until the
    total fits.
    """
    n_words = sum(len(doc) for doc in words)
    units = np.arange(n_words) if units is None else units
    costs = word_costs(words, count_pieces or count_tokens)
    n_units = int(units[-1]) + 1 if len(units) else 0
    size = np.bincount(units, minlength=n_units)
    with np.errstate(invalid="ignore"):
        unit_priority = np.bincount(units, priority, minlength=n_units) / np.maximum(size, 1)
    unit_cost = np.bincount(units, costs, minlength=n_units).astype(np.int64)
    if budget >= total_tokens:
        keep_unit = unit_priority > -np.inf  # everything allowed fits: nothing to choose
    else:
        keep_unit = select_by_priority(unit_priority, unit_cost, budget)
    if after_select is not None:
        kept_words = after_select(keep_unit[units])
        keep_unit = np.bincount(units, kept_words, minlength=n_units) == size
    for _ in range(_MAX_FIT_ROUNDS):
        selection = render_selection(words, keep_unit[units], count_tokens)
        overshoot = sum(selection.counts) - budget
        if overshoot <= 0:
            return selection
        keep_unit = drop_lowest(keep_unit, unit_priority, unit_cost, overshoot)
    return render_selection(words, np.zeros(n_words, bool), lambda texts: [0] * len(texts))


def word_costs(words: list[TextSpans], count: Callable[[Sequence[str]], list[int]]) -> np.ndarray:
    """[sum W_d] int64: each word's LLM tokens as it appears in running text, after a
    space unless the original had none before it (CJK, punctuation glued to a word)."""
    flat_words = [w for doc in words for w in doc.strings()]
    if not flat_words:
        return np.zeros(0, np.int64)
    spaced = np.concatenate([preceded_by_space(w) for w in words])
    pieces = [(" " + w) if sp else w for w, sp in zip(flat_words, spaced.tolist())]
    return np.asarray(count(pieces), np.int64)


def render_selection(
    words: list[TextSpans], keep: np.ndarray, count_tokens: Callable[[Sequence[str]], list[int]]
) -> Selection:
    """Per-document masks, rendered texts and their token counts for a flat [sum W_d] keep mask."""
    bounds = np.cumsum([0] + [len(doc) for doc in words])
    masks = [keep[bounds[d] : bounds[d + 1]] for d in range(len(words))]
    rendered = [render(w, m) for w, m in zip(words, masks)]
    return Selection(masks, rendered, count_tokens([text for text, _ in rendered]))


def preceded_by_space(words: TextSpans) -> np.ndarray:
    """[W] bool: whether whitespace stands right before each word in the original text.

    Words are maximal non-space runs (or single CJK characters), so a gap between
    the previous word's end and this word's start can only be whitespace.
    """
    previous_end = np.concatenate([[0], words.ends[:-1]])
    return words.starts > previous_end


def select_by_priority(priority: np.ndarray, costs: np.ndarray, budget: int, passes: int = 4) -> np.ndarray:
    """[U] bool: greedy by priority (ties: earlier first) within the budget; -inf never kept.

    Each pass takes the longest priority-ordered prefix of the remaining
    candidates that fits; units too large for what is left are skipped, so one
    big code block does not stop smaller units behind it from being kept.
    """
    keep = np.zeros(len(priority), bool)
    order = np.argsort(-priority, kind="stable")
    left = budget
    for _ in range(passes):
        candidates = order[~keep[order] & (costs[order] <= left) & (priority[order] > -np.inf)]
        taken = candidates[np.cumsum(costs[candidates]) <= left]
        if not len(taken):
            break
        keep[taken] = True
        left -= int(costs[taken].sum())
    return keep


def drop_lowest(keep: np.ndarray, priority: np.ndarray, costs: np.ndarray, overshoot: int) -> np.ndarray:
    """Unkeep the lowest-priority kept words until their costs cover `overshoot` (at least one)."""
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(priority[kept], kind="stable")]
    covered = np.cumsum(costs[order])
    n = int(np.searchsorted(covered, overshoot)) + 1
    out = keep.copy()
    out[order[:n]] = False
    return out


def _runs(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last word index of each run of consecutive kept words."""
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return idx, idx
    breaks = np.flatnonzero(np.diff(idx) > 1)
    return idx[np.r_[0, breaks + 1]], idx[np.r_[breaks, len(idx) - 1]]


def _separator(gap: str) -> str:
    """What stands for dropped text: a newline if it held one, a space if it held any, else nothing (CJK)."""
    if "\n" in gap:
        return "\n"
    return " " if any(c.isspace() for c in gap) else ""


def render(words: TextSpans, keep: np.ndarray) -> tuple[str, tuple[Span, ...]]:
    """The kept runs of the original text (inner whitespace intact), joined by separators."""
    first, last = _runs(keep)
    spans = tuple(Span(s, e) for s, e in zip(words.starts[first].tolist(), words.ends[last].tolist()))
    return render_spans(words.text, spans), spans


def render_spans(text: str, spans: Sequence[Span]) -> str:
    """Spans of text (in order) joined by what stands for the text dropped between them."""
    parts: list[str] = []
    for i, span in enumerate(spans):
        if i:
            parts.append(_separator(text[spans[i - 1].end : span.start]))
        parts.append(text[span.start : span.end])
    return "".join(parts)


def keep_sentences(
    hub: ModelHub,
    request: CompressRequest,
    sentences: Sequence[TextSpans],
    priority: Sequence[np.ndarray],
    budget: int,
    tokens_before: Sequence[int],
    scores: Sequence[np.ndarray] | None = None,
) -> tuple[DocumentResult, ...]:
    """Keep whole sentences by priority within `budget` downstream-LLM tokens.

    priority: per document [S_d] float; -inf = never keep, +inf = always keep.
    scores: per document [S_d], reported as each document's score (max); defaults to priority.
    Sentences are rendered in their original order from the original text.
    """
    words = [segment_words(d.text) for d in request.documents]
    units, word_priority, offset = [], [], 0
    for w, s, p in zip(words, sentences, priority):
        owner = sentence_of_word(w, s)
        units.append(owner + offset)
        word_priority.append(np.asarray(p, np.float64)[owner] if len(w) else np.zeros(0))
        offset += max(len(s), 1)
    selection = fit_budget(
        words,
        np.concatenate(word_priority) if word_priority else np.zeros(0),
        hub.count_tokens,
        budget,
        total_tokens=int(sum(tokens_before)),
        count_pieces=hub.count_piece_tokens,
        units=np.concatenate(units) if units else np.zeros(0, np.int64),
    )
    reported = scores if scores is not None else priority
    best = [float(np.max(np.where(np.isfinite(r), r, 0.0))) if len(r) else 0.0 for r in reported]
    return document_results(request, selection, tokens_before, best)


def document_results(
    request: CompressRequest,
    selection: Selection,
    tokens_before: Sequence[int],
    scores: Sequence[float],
    word_labels: Sequence[tuple[WordLabel, ...]] | None = None,
) -> tuple[DocumentResult, ...]:
    """One DocumentResult per request document, in request order, from a selection."""
    labels = word_labels or [()] * len(request.documents)
    return tuple(
        DocumentResult(
            id=doc.id, text=text, kept_spans=spans, tokens_before=int(before), tokens_after=int(after),
            score=float(score), metadata=dict(doc.metadata), word_labels=tuple(doc_labels),
        )
        for doc, (text, spans), before, after, score, doc_labels in zip(
            request.documents, selection.rendered, tokens_before, selection.counts, scores, labels
        )
    )


def empty_results(
    request: CompressRequest, tokens_before: Sequence[int], tokens_after: Sequence[int], scores: Sequence[float]
) -> tuple[DocumentResult, ...]:
    """Documents with no text of their own (vector methods, a summary held by the first one,
    a request the relevance gate emptied): counts and scores only."""
    return tuple(
        DocumentResult(
            id=doc.id, text="", kept_spans=(), tokens_before=int(before), tokens_after=int(after),
            score=float(score), metadata=dict(doc.metadata),
        )
        for doc, before, after, score in zip(request.documents, tokens_before, tokens_after, scores)
    )
