"""LLMLingua-2: keep the words a token classifier scores as needed (Pan et al., 2024).

Stages: segment (words) -> score (token classifier, all documents in one pass)
-> select (one budget over all documents, counted in the downstream LLM's
tokens, never exceeded) -> render (kept spans of the original text).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np

from ctxcomp import wordscore
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.methods import MethodOutput, SelectiveOptions, token_budget
from ctxcomp.methods import llmlingua2_compat as compat
from ctxcomp.types import CompressRequest, DocumentResult, Span, WordLabel

_DIGIT = re.compile(r"\d")
_MAX_FIT_ROUNDS = 8


@dataclass(frozen=True)
class LLMLingua2Config(SelectiveOptions):
    rate: float = field(default=0.33, metadata={"help": "kept share of tokens when the request sets no target"})
    aggregation: Literal["mean", "first"] = field(
        default="mean", metadata={"help": "how sub-token probabilities become a word's score"}
    )
    force_tokens: tuple[str, ...] = field(default=(), metadata={"help": "words always kept (exact match)"})
    force_reserve_digit: bool = field(default=False, metadata={"help": "always keep words containing a digit"})
    drop_consecutive: bool = field(
        default=False, metadata={"help": "keep only the first of a run of identical kept force tokens"}
    )
    max_batch_tokens: int = field(
        default=2048, metadata={"help": "padded encoder tokens per forward batch (small batches stay in cache)"}
    )
    precision: Literal["fp32", "bf16"] = field(
        default="fp32", metadata={"help": "classifier precision; bf16 is ~2x faster on CPUs with AMX/AVX512-BF16"}
    )
    mode: Literal["budget", "compat"] = field(
        default="budget",
        metadata={
            "help": "budget: one exact LLM-token budget over all documents; compat: the llmlingua "
            "package's decisions (encoder words, per-chunk percentile threshold)"
        },
    )
    query_weight: float = field(
        default=0.0,
        metadata={"help": "budget mode: add this times the query-sentence similarity to each word's score (0 = off)"},
    )
    coarse_rate: float = field(
        default=1.0,
        metadata={"help": "budget mode: share of documents the context-level filter keeps (by mean score) before word selection"},
    )
    keep_structure: bool = field(
        default=True,
        metadata={"help": "budget mode: keep or drop code blocks, JSON values, markdown links and list markers whole"},
    )

    def check(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise InvalidRequest("options.rate", f"must be in (0, 1], got {self.rate}")
        if self.max_batch_tokens < 1:
            raise InvalidRequest("options.max_batch_tokens", f"must be positive, got {self.max_batch_tokens}")
        if not 0.0 < self.coarse_rate <= 1.0:
            raise InvalidRequest("options.coarse_rate", f"must be in (0, 1], got {self.coarse_rate}")
        if not 0.0 <= self.query_weight <= 10.0:
            raise InvalidRequest("options.query_weight", f"must be in [0, 10], got {self.query_weight}")


PRESETS: dict[str, LLMLingua2Config] = {
    "default": LLMLingua2Config(),
    "light": LLMLingua2Config(rate=0.5),
    "aggressive": LLMLingua2Config(rate=0.2),
}


@dataclass
class _Prepared:
    """One request after segmentation, waiting for its word scores."""

    request: CompressRequest
    config: LLMLingua2Config
    tokens_before: Sequence[int]
    words: list[wordscore.Words]
    chunks: list[wordscore.Chunk]  # doc indices local to the request
    encoded: list[compat.EncodedDocument] | None = None  # compat mode only

    @property
    def scoring_key(self) -> tuple[str, str, int]:
        return (self.config.precision, self.config.aggregation, self.config.max_batch_tokens)


class LLMLingua2:
    name: ClassVar[str] = "llmlingua2"
    description: ClassVar[str] = "extractive token classification (LLMLingua-2), one LLM-token budget over all documents"
    config_type: ClassVar[type] = LLMLingua2Config
    requires: ClassVar[tuple[str, ...]] = ("token_classifier", "downstream_llm")
    needs_query: ClassVar[bool] = False  # query-agnostic, like LLMLingua-2
    presets: ClassVar[dict[str, LLMLingua2Config]] = PRESETS

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def compress(self, request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> MethodOutput:
        return self.compress_many([(request, config, tokens_before)])[0]

    def compress_many(
        self, items: Sequence[tuple[CompressRequest, LLMLingua2Config, Sequence[int]]]
    ) -> list[MethodOutput]:
        """Several requests at once: their chunks share length-sorted encoder batches."""
        prepared = [self._segment(request, config, before) for request, config, before in items]
        scores = self._score(prepared)
        return [self._finish(p, s) for p, s in zip(prepared, scores)]

    def _segment(self, request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> _Prepared:
        classifier = self.hub.token_classifier(config.precision)
        tokenizer, max_length = classifier.tokenizer, classifier.max_length
        if config.mode == "compat":
            encoded = [compat.encode(tokenizer, d.text) for d in request.documents]
            chunks = [c for d, doc in enumerate(encoded) for c in compat.reference_chunks(tokenizer, doc, d, max_length)]
            return _Prepared(request, config, tokens_before, [doc.words for doc in encoded], chunks, encoded)
        words = [wordscore.segment(d.text) for d in request.documents]
        chunks = [c for d, w in enumerate(words) for c in wordscore.chunk_words(tokenizer, w.strings(), d, max_length)]
        return _Prepared(request, config, tokens_before, words, chunks)

    def _score(self, prepared: list[_Prepared]) -> list[list[np.ndarray]]:
        """Word scores per request and document; one encoder pass per scoring setting."""
        out: list[list[np.ndarray]] = [[] for _ in prepared]
        for key in dict.fromkeys(p.scoring_key for p in prepared):
            members = [i for i, p in enumerate(prepared) if p.scoring_key == key]
            precision, aggregation, max_batch_tokens = key
            first_doc = np.cumsum([0] + [len(prepared[i].words) for i in members])
            chunks = [
                dataclasses.replace(chunk, doc=chunk.doc + int(first_doc[n]))
                for n, i in enumerate(members)
                for chunk in prepared[i].chunks
            ]
            sizes = [len(w) for i in members for w in prepared[i].words]
            scores = wordscore.score_chunks(
                self.hub.token_classifier(precision), chunks, sizes, aggregation, max_batch_tokens  # type: ignore[arg-type]
            )
            for n, i in enumerate(members):
                out[i] = scores[first_doc[n] : first_doc[n + 1]]
        return out

    def _finish(self, prepared: _Prepared, scores: list[np.ndarray]) -> MethodOutput:
        select = self._select_compat if prepared.config.mode == "compat" else self._select_budgeted
        selection = select(prepared, scores)
        request = prepared.request
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
                request.documents,
                prepared.words,
                scores,
                selection.masks,
                selection.rendered,
                prepared.tokens_before,
                selection.counts,
            )
        )
        return MethodOutput(results)

    def _select_budgeted(self, prepared: _Prepared, scores: list[np.ndarray]) -> Selection:
        request, config, words = prepared.request, prepared.config, prepared.words
        flat_words = [w for doc in words for w in doc.strings()]
        priority = np.concatenate(scores).astype(np.float64) if flat_words else np.zeros(0)
        if config.query_weight > 0 and request.query.strip() and flat_words:
            priority += config.query_weight * np.concatenate(self._sentence_relevance(request.query, words))
        forced = forced_words(flat_words, config)
        priority[forced] = np.inf
        if config.coarse_rate < 1.0:
            priority[~np.repeat(coarse_filter(priority, words, config.coarse_rate), [len(w) for w in words])] = -np.inf
        units = None
        if config.keep_structure and flat_words:
            per_doc = [wordscore.unit_ids(w) for w in words]
            offsets = np.cumsum([0] + [int(u[-1]) + 1 if len(u) else 0 for u in per_doc])
            units = np.concatenate([u + off for u, off in zip(per_doc, offsets)])

        def drop_repeats(keep: np.ndarray) -> np.ndarray:
            return keep & ~repeated_force_tokens(flat_words, keep, forced)

        return fit_budget(
            words,
            priority,
            self.hub.count_tokens,
            token_budget(request, config.rate, prepared.tokens_before),
            total_tokens=int(sum(prepared.tokens_before)),
            count_pieces=self.hub.count_piece_tokens,
            units=units,
            after_select=drop_repeats if config.drop_consecutive else None,
        )

    def _sentence_relevance(self, query: str, words: list[wordscore.Words]) -> list[np.ndarray]:
        """[W_d] per document: cosine similarity between each word's sentence and the query."""
        sentence_of_word = [wordscore.sentence_ids(w) for w in words]
        sentences = []
        for w, ids in zip(words, sentence_of_word):
            for piece in np.split(np.arange(len(w)), np.flatnonzero(np.diff(ids)) + 1) if len(w) else []:
                sentences.append(w.text[w.starts[piece[0]] : w.ends[piece[-1]]])
        encoder = self.hub.sentence_encoder()
        embedded = encoder.encode([query, *sentences], convert_to_numpy=True, normalize_embeddings=True)
        similarity = embedded[1:] @ embedded[0]  # [S]
        firsts = np.cumsum([0] + [int(ids[-1]) + 1 if len(ids) else 0 for ids in sentence_of_word])
        return [similarity[first + ids] for first, ids in zip(firsts, sentence_of_word)]

    def _select_compat(self, prepared: _Prepared, scores: list[np.ndarray]) -> Selection:
        """The llmlingua package's LLMLingua-2 decisions: per-chunk percentile thresholds."""
        config = prepared.config
        tokenizer = self.hub.token_classifier(config.precision).tokenizer
        rate = compat_rate(prepared.request, config, prepared.tokens_before)
        masks = []
        for doc, score in zip(prepared.encoded or [], scores):
            strings = doc.word_strings(tokenizer)
            forced = forced_words(strings, config)
            costs = np.asarray(self.hub.count_piece_tokens(strings), dtype=np.int64)
            keep = compat.percentile_keep(np.where(forced, 1.0, score), costs, doc.chunk_of_word, rate)
            if config.drop_consecutive:
                keep &= ~repeated_force_tokens(strings, keep, forced)
            masks.append(keep)
        rendered = [render(w, keep) for w, keep in zip(prepared.words, masks)]
        return Selection(masks, rendered, self.hub.count_tokens([text for text, _ in rendered]))


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
    flat_words = [w for doc in words for w in doc.strings()]
    bounds = np.cumsum([0] + [len(doc) for doc in words])
    units = np.arange(len(flat_words)) if units is None else units
    # A word costs its tokens as it appears in running text: after a space unless
    # the original had none before it (CJK, punctuation glued to a word).
    spaced = np.concatenate([preceded_by_space(w) for w in words]) if flat_words else np.zeros(0, bool)
    pieces = [(" " + w) if sp else w for w, sp in zip(flat_words, spaced.tolist())]
    costs = np.asarray((count_pieces or count_tokens)(pieces), np.int64)
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
        keep = keep_unit[units]
        masks = [keep[bounds[d] : bounds[d + 1]] for d in range(len(words))]
        rendered = [render(w, m) for w, m in zip(words, masks)]
        counts = count_tokens([text for text, _ in rendered])
        overshoot = sum(counts) - budget
        if overshoot <= 0:
            return Selection(masks, rendered, counts)
        keep_unit = drop_lowest(keep_unit, unit_priority, unit_cost, overshoot)
    masks = [np.zeros(len(w), bool) for w in words]
    return Selection(masks, [render(w, m) for w, m in zip(words, masks)], [0] * len(words))


def coarse_filter(priority: np.ndarray, words: list[wordscore.Words], rate: float) -> np.ndarray:
    """[D] bool: the documents with the highest mean word priority, ceil(rate * D) of them
    (LLMLingua-2's context-level filter). Must-keep words count as priority 1."""
    sizes = np.asarray([len(w) for w in words])
    finite = np.where(np.isinf(priority), 1.0, priority)
    doc_of_word = np.repeat(np.arange(len(words)), sizes)
    means = np.bincount(doc_of_word, finite, minlength=len(words)) / np.maximum(sizes, 1)
    keep = np.zeros(len(words), bool)
    keep[np.argsort(-means, kind="stable")[: int(np.ceil(rate * len(words)))]] = True
    return keep


def compat_rate(request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> float:
    """The reference's rate: target_tokens becomes min(target / total, 1)."""
    if request.target_tokens is not None:
        return min(request.target_tokens / max(sum(tokens_before), 1), 1.0)
    return request.rate if request.rate is not None else config.rate


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
