"""Words of a document and their keep-probabilities from a token classifier.

Shared by the LLMLingua-2 method and the script that trains its classifier, so
training and inference see the same units. A "word" is a whitespace-delimited
run, except that URLs stay whole and each CJK character is its own unit
(CJK text has no spaces to split on).
"""

from __future__ import annotations

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


def pad_batch(chunks: Sequence[Chunk], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and word index, each [B, T]; word index -1 on specials/padding."""
    width = max(len(c.input_ids) for c in chunks)
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


@torch.inference_mode()
def score_documents(
    classifier: Any,
    documents: Sequence[list[str]],
    *,
    aggregation: Aggregation = "mean",
    max_batch_tokens: int = 8192,
) -> list[np.ndarray]:
    """Keep-probability of every word of every document, [W_d] float32 each.

    All chunks of all documents go through the encoder together, in
    length-sorted, dynamically padded batches; sub-token probabilities are
    reduced to words with one scatter per batch (no per-word Python loop).
    """
    tokenizer, model = classifier.tokenizer, classifier.model
    chunks = [c for d, words in enumerate(documents) for c in chunk_words(tokenizer, words, d, classifier.max_length)]
    offsets = np.cumsum([0] + [len(w) for w in documents])
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
    return [scores[offsets[d] : offsets[d + 1]] for d in range(len(documents))]
