"""Keep-probabilities of words from a token classifier (LLMLingua-2's scoring stage).

Shared by the LLMLingua-2 method and the script that trains its classifier, so
training and inference see the same chunks. Words are ctxcomp.text units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch

from ctxcomp.encoder_batches import batches_by_length, pad_rows, padded_width
from ctxcomp.cancellation import checkpoint
from ctxcomp.text import SENTENCE_END
from ctxcomp.tokenization import word_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ctxcomp.models.registry import TokenClassifier


@dataclass(frozen=True)
class Chunk:
    """Encoder input for a contiguous run of one document's words."""

    doc: int
    first_word: int  # index of the chunk's first word in its document
    input_ids: list[int]  # [CLS] sub-tokens [SEP]
    word_of_token: list[int]  # per input id: word index within the document, -1 for specials


def chunk_words(tokenizer: PreTrainedTokenizerBase, words: list[str], doc: int, max_length: int) -> list[Chunk]:
    """Split one document's words into encoder-sized chunks, preferably at sentence ends.

    A word whose sub-tokens alone exceed the chunk size is truncated to fit:
    its score then comes from the sub-tokens that fit (it is never dropped unseen).
    """
    if not words:
        return []
    capacity = max_length - 2
    ids_per_word = [ids[:capacity] if ids else [tokenizer.unk_token_id] for ids in word_token_ids(tokenizer, words)]
    chunks: list[Chunk] = []
    start = 0
    while start < len(words):
        end, used, last_break = start, 0, -1
        while end < len(words) and used + len(ids_per_word[end]) <= capacity:
            used += len(ids_per_word[end])
            if SENTENCE_END.search(words[end]):
                last_break = end + 1
            end += 1
        # Cut at the last sentence end if that keeps the chunk at least half full.
        if end < len(words) and last_break > start and last_break - start >= (end - start) // 2:
            end = last_break
        chunks.append(_make_chunk(tokenizer, ids_per_word, doc, start, end))
        start = end
    return chunks


def _make_chunk(tokenizer: PreTrainedTokenizerBase, ids_per_word: list[list[int]], doc: int, start: int, end: int) -> Chunk:
    ids = [tokenizer.cls_token_id]
    owner = [-1]
    for w in range(start, end):
        ids.extend(ids_per_word[w])
        owner.extend([w] * len(ids_per_word[w]))
    ids.append(tokenizer.sep_token_id)
    owner.append(-1)
    return Chunk(doc, start, ids, owner)


def pad_batch(chunks: Sequence[Chunk], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and word index, each [B, T]; word index -1 on specials/padding.

    T is the longest chunk rounded up (ctxcomp.encoder_batches.padded_width).
    """
    width = padded_width([len(c.input_ids) for c in chunks])
    ids = pad_rows([c.input_ids for c in chunks], pad_id, width)
    mask = pad_rows([[1] * len(c.input_ids) for c in chunks], 0, width)
    owner = pad_rows([c.word_of_token for c in chunks], -1, width)
    return ids, mask, owner


Aggregation = Literal["mean", "first"]


def score_documents(
    classifier: TokenClassifier,
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
    classifier: TokenClassifier,
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
    sums = np.zeros(int(offsets[-1]))
    counts = np.zeros(int(offsets[-1]))
    for batch in batches_by_length([len(c.input_ids) for c in chunks], max_batch_tokens):
        checkpoint()
        members = [chunks[i] for i in batch]
        ids, mask, owner = pad_batch(members, tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        flat, probs = _token_words(keep_probability(logits), owner.numpy(), offsets[[c.doc for c in members]], aggregation)
        sums += np.bincount(flat, probs, minlength=len(sums))
        counts += np.bincount(flat, minlength=len(counts))
    scores = (sums / np.maximum(counts, 1)).astype(np.float32)
    return [scores[offsets[d] : offsets[d + 1]] for d in range(len(words_per_document))]


def keep_probability(logits: torch.Tensor) -> np.ndarray:
    """[B, T, 2] logits -> [B, T] float64 softmax probability of label 1, computed in numpy:
    torch's small ops after an OpenVINO forward woke its OpenMP pool, whose spinning workers
    then slowed the next forward (7% of a fast-mode request, bench/llmlingua2_vs_reference.py)."""
    pair = logits.detach().float().cpu().numpy().astype(np.float64)
    return 1.0 / (1.0 + np.exp(pair[..., 0] - pair[..., 1]))


def _token_words(probs: np.ndarray, owner: np.ndarray, first_word: np.ndarray, aggregation: Aggregation) -> tuple[np.ndarray, np.ndarray]:
    """Global word index and probability of every token that counts towards its word's score:
    probs, owner [B, T] (owner -1 on specials and padding), first_word [B] (each row's document's
    first word in the flat word list). "first" counts a word's first sub-token only."""
    valid = owner >= 0
    if aggregation == "first":
        previous = np.pad(owner[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
        valid &= owner != previous
    return (owner + first_word[:, None])[valid], probs[valid]
