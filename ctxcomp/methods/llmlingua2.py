"""LLMLingua-2: keep the words a token classifier scores as needed (Pan et al., 2024).

Stages: segment (words) -> score (token classifier, all documents in one pass)
-> select (one budget over all documents, counted in the downstream LLM's
tokens, never exceeded) -> render (kept spans of the original text).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Literal, Sequence

import numpy as np

from ctxcomp import relevance, text, wordscore
from ctxcomp.errors import InvalidRequest
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, SelectiveOptions, share
from ctxcomp.methods import llmlingua2_compat as compat
from ctxcomp.models.precision import Precision
from ctxcomp.selection import Selection, document_results, fit_budget, render, token_budget
from ctxcomp.types import CompressRequest, WordLabel

_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class LLMLingua2Config(SelectiveOptions):
    rate: float = share(0.33, "kept share of tokens when the request sets no target")
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
    classifier: Literal["full", "fast"] = field(
        default="full",
        metadata={"help": "query-agnostic scoring and compat mode: the six-layer token classifier (full, what the "
                          "reference runs) or its three-layer student distilled from it (fast: about half the encoder work)"},
    )
    precision: Precision = field(
        default="auto",
        metadata={"help": "token classifier precision; auto: the server's choice (the fastest here, timed at load), "
                          "fp32 in compat mode with the full classifier; openvino-*: compiled by OpenVINO"},
    )
    mode: Literal["budget", "compat"] = field(
        default="budget",
        metadata={
            "help": "budget: one exact LLM-token budget over all documents; compat: the llmlingua "
            "package's decisions (encoder words, per-chunk percentile threshold)"
        },
    )
    query_aware: bool = field(
        default=True,
        metadata={"help": "budget mode with a query: score words by the relevance model's query-aware token head "
                          "(false, or no query: the query-agnostic token classifier)"},
    )
    query_weight: float = field(
        default=0.0,
        metadata={"help": "budget mode with a query: add this times the relevance of the word's sentence (0 = off)"},
    )
    coarse_rate: float = share(
        1.0, "budget mode: share of documents the context-level filter keeps (by mean score) before word selection"
    )
    keep_structure: bool = field(
        default=True,
        metadata={"help": "budget mode: keep or drop code blocks, JSON values, markdown links and list markers whole"},
    )

    def check(self) -> None:
        if self.max_batch_tokens < 1:
            raise InvalidRequest("options.max_batch_tokens", f"must be positive, got {self.max_batch_tokens}")
        if not 0.0 <= self.query_weight <= 10.0:
            raise InvalidRequest("options.query_weight", f"must be in [0, 10], got {self.query_weight}")


CLASSIFIER_ROLES = {"full": "token_classifier", "fast": "token_classifier_fast"}


def classifier_form(config: LLMLingua2Config) -> tuple[str, str]:
    """The token classifier (role, precision) a request uses: compat mode with the full classifier
    reproduces the reference, so fp32 unless asked."""
    exact = config.mode == "compat" and config.classifier == "full" and config.precision == "auto"
    return CLASSIFIER_ROLES[config.classifier], "fp32" if exact else config.precision


@dataclass
class _Prepared:
    """One request after segmentation, waiting for its word scores."""

    request: CompressRequest
    config: LLMLingua2Config
    tokens_before: Sequence[int]
    words: list[text.TextSpans]
    chunks: list[wordscore.Chunk]  # doc indices local to the request (none when query-aware)
    encoded: list[compat.EncodedDocument] | None = None  # compat mode only
    relevance: tuple[relevance.DocumentScores, ...] | None = None  # query-aware only

    @property
    def query_aware(self) -> bool:
        return self.config.mode == "budget" and self.config.query_aware and bool(self.request.query.strip())

    @property
    def scoring_key(self) -> tuple[tuple[str, str], str, int]:
        return (classifier_form(self.config), self.config.aggregation, self.config.max_batch_tokens)


class LLMLingua2(MethodBase):
    name: ClassVar[str] = "llmlingua2"
    description: ClassVar[str] = "extractive token classification (LLMLingua-2), one LLM-token budget over all documents"
    requires: ClassVar[tuple[str, ...]] = ("token_classifier", "relevance", "spacy", "downstream_llm")
    needs_query: ClassVar[bool] = False  # without a query it is query-agnostic, like LLMLingua-2
    presets: ClassVar[dict[str, LLMLingua2Config]] = {"default": LLMLingua2Config()}

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        """Several requests at once: their chunks share length-sorted encoder batches."""
        prepared = [self._segment(item.request, item.config, item.tokens_before) for item in items]
        aware = [i for i, p in enumerate(prepared) if p.query_aware]
        for i, scored in zip(aware, relevance.scores_of(self.hub, [items[i] for i in aware])):
            prepared[i].relevance = scored
        scores = self._score([p for p in prepared if not p.query_aware])
        return [self._finish(p, self._word_scores(p) if p.query_aware else next(scores)) for p in prepared]

    def _segment(self, request: CompressRequest, config: LLMLingua2Config, tokens_before: Sequence[int]) -> _Prepared:
        classifier = self.hub.token_classifier(*classifier_form(config))
        tokenizer, max_length = classifier.tokenizer, classifier.max_length
        if config.mode == "compat":
            encoded = [compat.encode(tokenizer, d.text) for d in request.documents]
            chunks = [c for d, doc in enumerate(encoded) for c in compat.reference_chunks(tokenizer, doc, d, max_length)]
            return _Prepared(request, config, tokens_before, [doc.words for doc in encoded], chunks, encoded)
        words = [text.segment_words(d.text) for d in request.documents]
        prepared = _Prepared(request, config, tokens_before, words, [])
        if not prepared.query_aware:
            prepared.chunks = [c for d, w in enumerate(words) for c in wordscore.chunk_words(tokenizer, w.strings(), d, max_length)]
        return prepared

    @staticmethod
    def _word_scores(prepared: _Prepared) -> list[np.ndarray]:
        """[W_d] per document: the token head's keep probability of each word."""
        return [relevance.sigmoid(d.word_logits) for d in prepared.relevance or ()]

    def _score(self, prepared: list[_Prepared]) -> Iterator[list[np.ndarray]]:
        """Token-classifier word scores per request and document, in order; one encoder pass per scoring setting."""
        out: list[list[np.ndarray]] = [[] for _ in prepared]
        for key in dict.fromkeys(p.scoring_key for p in prepared):
            members = [i for i, p in enumerate(prepared) if p.scoring_key == key]
            form, aggregation, max_batch_tokens = key
            first_doc = np.cumsum([0] + [len(prepared[i].words) for i in members])
            chunks = [
                dataclasses.replace(chunk, doc=chunk.doc + int(first_doc[n]))
                for n, i in enumerate(members)
                for chunk in prepared[i].chunks
            ]
            sizes = [len(w) for i in members for w in prepared[i].words]
            scores = wordscore.score_chunks(
                self.hub.token_classifier(*form), chunks, sizes, aggregation, max_batch_tokens  # type: ignore[arg-type]
            )
            for n, i in enumerate(members):
                out[i] = scores[first_doc[n] : first_doc[n + 1]]
        return iter(out)

    def _finish(self, prepared: _Prepared, scores: list[np.ndarray]) -> MethodOutput:
        select = self._select_compat if prepared.config.mode == "compat" else self._select_budgeted
        selection = select(prepared, scores)
        request = prepared.request
        labels = None
        if request.return_word_labels:
            labels = [word_labels(w, score, k) for w, score, k in zip(prepared.words, scores, selection.masks)]
        if prepared.relevance:  # query-aware: a document's score is its relevance
            doc_scores = [d.probability for d in prepared.relevance]
        else:
            doc_scores = [float(score.mean()) if len(score) else 0.0 for score in scores]
        return MethodOutput(document_results(request, selection, prepared.tokens_before, doc_scores, labels))

    def _select_budgeted(self, prepared: _Prepared, scores: list[np.ndarray]) -> Selection:
        request, config, words = prepared.request, prepared.config, prepared.words
        flat_words = [w for doc in words for w in doc.strings()]
        priority = np.concatenate(scores).astype(np.float64) if flat_words else np.zeros(0)
        if config.query_weight > 0 and prepared.relevance and flat_words:
            sentence = [relevance.sigmoid(d.sentence_logits)[d.sentence_of_word] if len(d.sentence_logits) else
                        np.zeros(len(d.words)) for d in prepared.relevance]
            priority += config.query_weight * np.concatenate(sentence)
        forced = forced_words(flat_words, config)
        priority[forced] = np.inf
        if config.coarse_rate < 1.0:
            priority[~np.repeat(coarse_filter(priority, words, config.coarse_rate), [len(w) for w in words])] = -np.inf
        units = None
        if config.keep_structure and flat_words:
            per_doc = [text.unit_ids(w) for w in words]
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

    def _select_compat(self, prepared: _Prepared, scores: list[np.ndarray]) -> Selection:
        """The llmlingua package's LLMLingua-2 decisions: per-chunk percentile thresholds."""
        config = prepared.config
        tokenizer = self.hub.token_classifier(*classifier_form(config)).tokenizer
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
        return Selection(masks, rendered, self.hub.count_tokens([t for t, _ in rendered]))


def coarse_filter(priority: np.ndarray, words: list[text.TextSpans], rate: float) -> np.ndarray:
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


def word_labels(words: text.TextSpans, scores: np.ndarray, keep: np.ndarray) -> tuple[WordLabel, ...]:
    return tuple(
        WordLabel(int(s), int(e), float(p), bool(k))
        for s, e, p, k in zip(words.starts.tolist(), words.ends.tolist(), scores.tolist(), keep.tolist())
    )
