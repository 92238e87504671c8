"""Sentences of a document (spaCy), and the glue that lets sentence-level
methods reuse the word-level budget fitting of ctxcomp.methods.llmlingua2.

A sentence-level method scores sentences; `keep_sentences` spreads each score
over the sentence's words, makes every sentence one selection unit, and fits
the request's LLM-token budget exactly (never above) by rendering kept
sentences from the original text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ctxcomp import wordscore
from ctxcomp.hub import ModelHub
from ctxcomp.types import CompressRequest, DocumentResult

# spaCy's senter does not always break at blank lines; paragraphs never share a sentence.
_BLOCK = re.compile(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", re.S)


@dataclass(frozen=True)
class Sentences:
    """Sentences of one text: char offsets [starts[i], ends[i]) into `text`, whitespace trimmed."""

    text: str
    starts: np.ndarray  # [S] int64
    ends: np.ndarray  # [S] int64

    def __len__(self) -> int:
        return len(self.starts)

    def strings(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist())]


def split(nlp: Any, texts: Sequence[str]) -> list[Sentences]:
    """Split each text into sentences with a spaCy pipeline (one nlp.pipe over all blocks)."""
    blocks = [(t, m.start(), m.group()) for t, text in enumerate(texts) for m in _BLOCK.finditer(text)]
    spans: list[list[tuple[int, int]]] = [[] for _ in texts]
    for (t, offset, _), doc in zip(blocks, nlp.pipe((b for _, _, b in blocks), batch_size=64)):
        for sent in doc.sents:
            raw = sent.text
            lead = len(raw) - len(raw.lstrip())
            trimmed = raw.strip()
            if trimmed:
                start = offset + sent.start_char + lead
                spans[t].append((start, start + len(trimmed)))
    out = []
    for text, found in zip(texts, spans):
        arr = np.asarray(found, dtype=np.int64).reshape(-1, 2)
        out.append(Sentences(text, arr[:, 0].copy(), arr[:, 1].copy()))
    return out


def sentence_of_word(words: wordscore.Words, sentences: Sentences) -> np.ndarray:
    """[W] int64: the sentence holding each word's first character."""
    if not len(sentences):
        return np.zeros(len(words), np.int64)
    return np.maximum(np.searchsorted(sentences.starts, words.starts, side="right") - 1, 0)


def keep_sentences(
    hub: ModelHub,
    request: CompressRequest,
    sentences: Sequence[Sentences],
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
    from ctxcomp.methods.llmlingua2 import fit_budget

    words = [wordscore.segment(d.text) for d in request.documents]
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
    return tuple(
        DocumentResult(
            id=doc.id,
            text=text,
            kept_spans=spans,
            tokens_before=before,
            tokens_after=after,
            score=float(np.max(np.where(np.isfinite(r), r, 0.0))) if len(r) else 0.0,
            metadata=dict(doc.metadata),
        )
        for doc, (text, spans), before, after, r in zip(
            request.documents, selection.rendered, tokens_before, selection.counts, reported
        )
    )
