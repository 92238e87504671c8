"""Text as units: words and sentences of a document as character spans.

One class, `TextSpans`, holds either (offsets into the original text, so kept
units render from the original). Words come from a regex (URLs whole, CJK
characters single); sentences from spaCy; structure spans (code, JSON, links,
list markers) keep units whole that must not be cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ctxcomp.cancellation import checkpoint

if TYPE_CHECKING:
    from spacy.language import Language

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3000-\u303f\uff00-\uffef"
_WORD = re.compile(rf"https?://\S+|www\.\S+|[{_CJK}]|[^\s{_CJK}]+")
SENTENCE_END = re.compile(r"[.!?;:。！？]['\")\]]*$")


@dataclass(frozen=True)
class TextSpans:
    """Units of one text (words or sentences): char offsets [starts[i], ends[i]) into `text`."""

    text: str
    starts: np.ndarray  # [W] int64
    ends: np.ndarray  # [W] int64

    def __len__(self) -> int:
        return len(self.starts)

    def strings(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist())]


def segment_words(text: str) -> TextSpans:
    """Words: whitespace-delimited runs; URLs whole; each CJK character its own unit."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    arr = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return TextSpans(text, arr[:, 0].copy(), arr[:, 1].copy())


_FENCED_CODE = re.compile(r"```[\s\S]*?```|~~~[\s\S]*?~~~")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_MD_LINK = re.compile(r"!?\[[^\]\n]*\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_LIST_ITEM = re.compile(r"(?m)^[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S+")
_JSON_START = re.compile(r"[\[{]")
_JSON_DECODER = json.JSONDecoder()


def structure_spans(text: str) -> list[tuple[int, int]]:
    """Character spans that must be kept or dropped whole: fenced and inline code,
    JSON objects/arrays, markdown links, and a list item's marker with its first word.
    (URLs and numbers are single words already.) Sorted, non-overlapping."""
    spans: list[tuple[int, int]] = []
    taken = np.zeros(len(text) + 1, dtype=bool)

    def claim(start: int, end: int) -> None:
        if not taken[start:end].any():
            spans.append((start, end))
            taken[start:end] = True

    for pattern in (_FENCED_CODE, _INLINE_CODE):
        for m in pattern.finditer(text):
            claim(m.start(), m.end())
    for m in _JSON_START.finditer(text):
        if taken[m.start()]:
            continue
        try:
            value, end = _JSON_DECODER.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)) and value:
            claim(m.start(), end)
    for pattern in (_MD_LINK, _LIST_ITEM):
        for m in pattern.finditer(text):
            claim(m.start(), m.end())
    return sorted(spans)


def unit_ids(words: TextSpans) -> np.ndarray:
    """[W] int64: the selection unit of each word. Words inside one structure span
    (see structure_spans) share a unit; every other word is a unit of its own.
    Unit ids are increasing along the text."""
    if not len(words):
        return np.zeros(0, np.int64)
    spans = np.asarray(structure_spans(words.text), dtype=np.int64).reshape(-1, 2)
    new_unit = np.ones(len(words), dtype=bool)
    if len(spans):
        # The span (if any) holding each word's start; a word continuing the same span joins its unit.
        holder = np.searchsorted(spans[:, 0], words.starts, side="right") - 1
        inside = (holder >= 0) & (words.starts < spans[np.maximum(holder, 0), 1])
        span_of_word = np.where(inside, holder, -1)
        same_as_previous = (span_of_word[1:] == span_of_word[:-1]) & (span_of_word[1:] >= 0)
        new_unit[1:] = ~same_as_previous
    return np.cumsum(new_unit) - 1


# spaCy's senter does not always break at blank lines; paragraphs never share a sentence.
_BLOCK = re.compile(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", re.S)


SPACY_BATCH = 16  # blocks per spaCy batch: also the cancellation checkpoint's granularity


def split_sentences(nlp: Language, texts: Sequence[str]) -> list[TextSpans]:
    """Split each text into sentences with a spaCy pipeline (one nlp.pipe over all blocks)."""
    blocks = [(t, m.start(), m.group()) for t, text in enumerate(texts) for m in _BLOCK.finditer(text)]
    spans: list[list[tuple[int, int]]] = [[] for _ in texts]
    for (t, offset, _), doc in zip(blocks, nlp.pipe((b for _, _, b in blocks), batch_size=SPACY_BATCH)):
        checkpoint()
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
        out.append(TextSpans(text, arr[:, 0].copy(), arr[:, 1].copy()))
    return out


def sentence_of_word(words: TextSpans, sentences: TextSpans) -> np.ndarray:
    """[W] int64: the sentence holding each word's first character."""
    if not len(sentences):
        return np.zeros(len(words), np.int64)
    return np.maximum(np.searchsorted(sentences.starts, words.starts, side="right") - 1, 0)
