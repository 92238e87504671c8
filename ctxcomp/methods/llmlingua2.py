"""LLMLingua-2: keep the words a token classifier scores as needed (Pan et al., 2024).

Stages: segment (words) -> score (token classifier, all documents in one pass)
-> select (one budget over all documents, counted in the downstream LLM's
tokens, never exceeded) -> render (kept spans of the original text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np

from ctxcomp import wordscore
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.methods import MethodOutput
from ctxcomp.types import CompressRequest, DocumentResult, Span, WordLabel

_DIGIT = re.compile(r"\d")
_MAX_FIT_ROUNDS = 8


@dataclass(frozen=True)
class LLMLingua2Config:
    rate: float = field(default=0.33, metadata={"help": "kept share of tokens when the request sets no target"})
    aggregation: Literal["mean", "first"] = field(
        default="mean", metadata={"help": "how sub-token probabilities become a word's score"}
    )
    force_tokens: tuple[str, ...] = field(default=(), metadata={"help": "words always kept (exact match)"})
    force_reserve_digit: bool = field(default=False, metadata={"help": "always keep words containing a digit"})
    drop_consecutive: bool = field(
        default=False, metadata={"help": "keep only the first of a run of identical kept force tokens"}
    )
    max_batch_tokens: int = field(default=8192, metadata={"help": "padded encoder tokens per forward batch"})

    def check(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise InvalidRequest("options.rate", f"must be in (0, 1], got {self.rate}")
        if self.max_batch_tokens < 512:
            raise InvalidRequest("options.max_batch_tokens", f"must be at least 512, got {self.max_batch_tokens}")


PRESETS: dict[str, LLMLingua2Config] = {
    "default": LLMLingua2Config(),
    "light": LLMLingua2Config(rate=0.5),
    "aggressive": LLMLingua2Config(rate=0.2),
}


class LLMLingua2:
    name: ClassVar[str] = "llmlingua2"
    description: ClassVar[str] = "extractive token classification (LLMLingua-2), one LLM-token budget over all documents"
    config_type: ClassVar[type] = LLMLingua2Config
    requires: ClassVar[tuple[str, ...]] = ("token_classifier", "downstream_llm")
    presets: ClassVar[dict[str, LLMLingua2Config]] = PRESETS

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def compress(self, request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> MethodOutput:
        words = [wordscore.segment(d.text) for d in request.documents]
        strings = [w.strings() for w in words]
        scores = wordscore.score_documents(
            self.hub.token_classifier(), strings, aggregation=config.aggregation, max_batch_tokens=config.max_batch_tokens
        )
        flat_words = [w for doc in strings for w in doc]
        priority = np.concatenate(scores).astype(np.float64) if flat_words else np.zeros(0)
        forced = forced_words(flat_words, config)
        priority[forced] = np.inf

        def drop_repeats(keep: np.ndarray) -> np.ndarray:
            return keep & ~repeated_force_tokens(flat_words, keep, forced)

        selection = fit_budget(
            words,
            priority,
            self.hub.count_tokens,
            token_budget(request, config, tokens_before),
            total_tokens=int(sum(tokens_before)),
            after_select=drop_repeats if config.drop_consecutive else None,
        )
        results = tuple(
            DocumentResult(
                id=doc.id,
                text=text,
                kept_spans=spans,
                tokens_before=before,
                tokens_after=after,
                score=float(score.mean()) if len(score) else 0.0,
                metadata=dict(doc.metadata),
                word_labels=word_labels(w, score, k) if request.return_word_labels else (),
            )
            for doc, w, score, k, (text, spans), before, after in zip(
                request.documents, words, scores, selection.masks, selection.rendered, tokens_before, selection.counts
            )
        )
        return MethodOutput(results)


@dataclass(frozen=True)
class Selection:
    masks: list[np.ndarray]  # per document, [W_d] bool
    rendered: list[tuple[str, tuple[Span, ...]]]  # per document: text and kept spans
    counts: list[int]  # per document: downstream-LLM tokens of the text


def fit_budget(
    words: list[wordscore.Words],
    priority: np.ndarray,
    count_tokens: Callable[[Sequence[str]], list[int]],
    budget: int,
    *,
    total_tokens: int,
    after_select: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Selection:
    """Keep the highest-priority words of all documents within `budget` LLM tokens, never above.

    priority: [sum W_d] float, documents concatenated; +inf marks must-keep words.
    Word costs give a first selection; the rendered texts are then counted for
    real (BPE merges across word boundaries differ) and the lowest-priority
    words dropped until the total fits.
    """
    flat_words = [w for doc in words for w in doc.strings()]
    bounds = np.cumsum([0] + [len(doc) for doc in words])
    # A word costs its tokens as it appears in running text: after a space unless
    # the original had none before it (CJK, punctuation glued to a word).
    spaced = np.concatenate([preceded_by_space(w) for w in words]) if flat_words else np.zeros(0, bool)
    costs = np.asarray(count_tokens([(" " + w) if sp else w for w, sp in zip(flat_words, spaced.tolist())]), np.int64)
    if budget >= total_tokens:
        keep = np.ones(len(flat_words), bool)  # everything fits: nothing to choose
    else:
        keep = select_by_priority(priority, costs, budget)
    if after_select is not None:
        keep = after_select(keep)
    for _ in range(_MAX_FIT_ROUNDS):
        masks = [keep[bounds[d] : bounds[d + 1]] for d in range(len(words))]
        rendered = [render(w, m) for w, m in zip(words, masks)]
        counts = count_tokens([text for text, _ in rendered])
        overshoot = sum(counts) - budget
        if overshoot <= 0:
            return Selection(masks, rendered, counts)
        keep = drop_lowest(keep, priority, costs, overshoot)
    masks = [np.zeros(len(w), bool) for w in words]
    return Selection(masks, [render(w, m) for w, m in zip(words, masks)], [0] * len(words))


def token_budget(request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> int:
    total = int(sum(tokens_before))
    if request.target_tokens is not None:
        return min(request.target_tokens, total)
    rate = request.rate if request.rate is not None else config.rate
    return int(total * rate)


def forced_words(words: list[str], config: LLMLingua2Config) -> np.ndarray:
    """[W] bool: words that are force tokens, or contain a digit when digits are reserved."""
    forced = np.zeros(len(words), bool)
    if config.force_tokens and words:
        forced |= np.isin(np.asarray(words, dtype=object), list(config.force_tokens))
    if config.force_reserve_digit and words:
        joined = "\x00".join(words)
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        hits = np.fromiter((m.start() for m in _DIGIT.finditer(joined)), dtype=np.int64)
        forced[np.searchsorted(starts, hits, side="right") - 1] = True
    return forced


def preceded_by_space(words: wordscore.Words) -> np.ndarray:
    """[W] bool: whether whitespace stands right before each word in the original text.

    Words are maximal non-space runs (or single CJK characters), so a gap between
    the previous word's end and this word's start can only be whitespace.
    """
    previous_end = np.concatenate([[0], words.ends[:-1]])
    return words.starts > previous_end


def select_by_priority(priority: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """[W] bool: the highest-priority words whose costs fit the budget (ties: earlier first)."""
    order = np.argsort(-priority, kind="stable")
    fits = np.cumsum(costs[order]) <= budget
    keep = np.zeros(len(priority), bool)
    keep[order[fits]] = True
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


def repeated_force_tokens(words: list[str], keep: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """[W] bool: kept force tokens equal to the previous kept word (LLMLingua's drop_consecutive)."""
    kept = np.flatnonzero(keep)
    if len(kept) < 2:
        return np.zeros(len(words), bool)
    arr = np.asarray(words, dtype=object)
    same = (arr[kept[1:]] == arr[kept[:-1]]) & forced[kept[1:]] & forced[kept[:-1]]
    out = np.zeros(len(words), bool)
    out[kept[1:][same]] = True
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


def render(words: wordscore.Words, keep: np.ndarray) -> tuple[str, tuple[Span, ...]]:
    """The kept runs of the original text (inner whitespace intact), joined by separators."""
    first, last = _runs(keep)
    starts, ends = words.starts[first].tolist(), words.ends[last].tolist()
    text = words.text
    parts: list[str] = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        if i:
            parts.append(_separator(text[ends[i - 1] : s]))
        parts.append(text[s:e])
    return "".join(parts), tuple(Span(s, e) for s, e in zip(starts, ends))


def word_labels(words: wordscore.Words, scores: np.ndarray, keep: np.ndarray) -> tuple[WordLabel, ...]:
    return tuple(
        WordLabel(int(s), int(e), float(p), bool(k))
        for s, e, p, k in zip(words.starts.tolist(), words.ends.tolist(), scores.tolist(), keep.tolist())
    )
