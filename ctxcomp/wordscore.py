"""Words of a document and their keep-probabilities from a token classifier.

Shared by the LLMLingua-2 method and the script that trains its classifier, so
training and inference see the same units. A "word" is a whitespace-delimited
run, except that URLs stay whole and each CJK character is its own unit
(CJK text has no spaces to split on).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3000-\u303f\uff00-\uffef"
_WORD = re.compile(rf"https?://\S+|www\.\S+|[{_CJK}]|[^\s{_CJK}]+")
_SENTENCE_END = re.compile(r"[.!?;:。！？]['\")\]]*$")


@dataclass(frozen=True)
class Words:
    """Word units of one text: char offsets [starts[i], ends[i]) into `text`."""

    text: str
    starts: np.ndarray  # [W] int64
    ends: np.ndarray  # [W] int64

    def __len__(self) -> int:
        return len(self.starts)

    def strings(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist())]


def segment(text: str) -> Words:
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    arr = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return Words(text, arr[:, 0].copy(), arr[:, 1].copy())


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


def unit_ids(words: Words) -> np.ndarray:
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


def sentence_ids(words: Words) -> np.ndarray:
    """[W] int64: index of the sentence each word belongs to (a sentence ends at . ! ? etc.)."""
    ends = np.fromiter((bool(_SENTENCE_END.search(w)) for w in words.strings()), dtype=bool, count=len(words))
    return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64) if len(words) else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Chunk:
    """Encoder input for a contiguous run of one document's words."""

    doc: int
    first_word: int  # index of the chunk's first word in its document
    input_ids: list[int]  # [CLS] sub-tokens [SEP]
    word_of_token: list[int]  # per input id: word index within the document, -1 for specials


def chunk_words(tokenizer: Any, words: list[str], doc: int, max_length: int) -> list[Chunk]:
    """Split one document's words into encoder-sized chunks, preferably at sentence ends.

    A word whose sub-tokens alone exceed the chunk size is truncated to fit:
    its score then comes from the sub-tokens that fit (it is never dropped unseen).
    """
    if not words:
        return []
    capacity = max_length - 2
    ids_per_word = tokenizer(words, add_special_tokens=False)["input_ids"]
    ids_per_word = [ids[:capacity] if ids else [tokenizer.unk_token_id] for ids in ids_per_word]
    chunks: list[Chunk] = []
    start = 0
    while start < len(words):
        end, used, last_break = start, 0, -1
        while end < len(words) and used + len(ids_per_word[end]) <= capacity:
            used += len(ids_per_word[end])
            if _SENTENCE_END.search(words[end]):
                last_break = end + 1
            end += 1
        # Cut at the last sentence end if that keeps the chunk at least half full.
        if end < len(words) and last_break > start and last_break - start >= (end - start) // 2:
            end = last_break
        chunks.append(_make_chunk(tokenizer, ids_per_word, doc, start, end))
        start = end
    return chunks


def _make_chunk(tokenizer: Any, ids_per_word: list[list[int]], doc: int, start: int, end: int) -> Chunk:
    ids = [tokenizer.cls_token_id]
    owner = [-1]
    for w in range(start, end):
        ids.extend(ids_per_word[w])
        owner.extend([w] * len(ids_per_word[w]))
    ids.append(tokenizer.sep_token_id)
    owner.append(-1)
    return Chunk(doc, start, ids, owner)


def batches_by_length(chunks: Sequence[Chunk], max_tokens: int) -> list[list[int]]:
    """Chunk indices grouped so that each padded batch holds at most max_tokens ids.

    Sorting by length first keeps padding small (the reference pads every chunk to 512).
    """
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].input_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(chunks[i].input_ids)  # ascending order: the newest is the longest
        if current and longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


PAD_MULTIPLE = 32  # batch widths are rounded up to this: few distinct shapes for the kernel caches


def pad_batch(chunks: Sequence[Chunk], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and word index, each [B, T]; word index -1 on specials/padding.

    T is the longest chunk rounded up to PAD_MULTIPLE: oneDNN keeps one primitive per
    distinct shape, and unrounded widths made a long-running server's memory creep up.
    """
    width = -(-max(len(c.input_ids) for c in chunks) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    owner = torch.full((len(chunks), width), -1, dtype=torch.long)
    for row, chunk in enumerate(chunks):
        n = len(chunk.input_ids)
        ids[row, :n] = torch.tensor(chunk.input_ids)
        mask[row, :n] = 1
        owner[row, :n] = torch.tensor(chunk.word_of_token)
    return ids, mask, owner


Aggregation = Literal["mean", "first"]


def score_documents(
    classifier: Any,
    documents: Sequence[list[str]],
    *,
    aggregation: Aggregation = "mean",
    max_batch_tokens: int = 8192,
) -> list[np.ndarray]:
    """Keep-probability of every word of every document, [W_d] float32 each."""
    tokenizer = classifier.tokenizer
    chunks = [c for d, words in enumerate(documents) for c in chunk_words(tokenizer, words, d, classifier.max_length)]
    return score_chunks(classifier, chunks, [len(w) for w in documents], aggregation, max_batch_tokens)


@torch.inference_mode()
def score_chunks(
    classifier: Any,
    chunks: Sequence[Chunk],
    words_per_document: Sequence[int],
    aggregation: Aggregation = "mean",
    max_batch_tokens: int = 8192,
) -> list[np.ndarray]:
    """Word keep-probabilities from encoder chunks of any number of documents.

    All chunks go through the encoder together, in length-sorted, dynamically
    padded batches; sub-token probabilities are reduced to words with one
    scatter per batch (no per-word Python loop). Returns [W_d] float32 per document.
    """
    tokenizer, model = classifier.tokenizer, classifier.model
    offsets = np.cumsum([0, *words_per_document])
    sums = torch.zeros(int(offsets[-1]))
    counts = torch.zeros(int(offsets[-1]))
    for batch in batches_by_length(chunks, max_batch_tokens):
        members = [chunks[i] for i in batch]
        ids, mask, owner = pad_batch(members, tokenizer.pad_token_id)
        probs = model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)[..., 1]  # [B, T]
        base = torch.tensor([int(offsets[c.doc]) for c in members]).unsqueeze(1)  # [B, 1]
        valid = owner >= 0
        if aggregation == "first":
            previous = torch.nn.functional.pad(owner[:, :-1], (1, 0), value=-1)
            valid &= owner != previous
        flat = (owner + base)[valid]
        sums.index_add_(0, flat, probs[valid])
        counts.index_add_(0, flat, torch.ones_like(probs[valid]))
    scores = (sums / counts.clamp(min=1)).numpy()
    return [scores[offsets[d] : offsets[d + 1]] for d in range(len(words_per_document))]
