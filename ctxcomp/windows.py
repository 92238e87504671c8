"""(query, document window) inputs of the cross-encoder relevance model.

A document longer than one window is split into windows of at most
`max_length` encoder tokens, preferably at sentence ends, each one starting
with the query: `[CLS] query [SEP] document words [SEP]`. Training
(training/train_relevance.py) and inference (ctxcomp.relevance) build
windows with this module, so both see the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ctxcomp.encoder_batches import pad_rows, padded_width
from ctxcomp.tokenization import word_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_QUERY_TOKENS = 96  # a longer query is cut: the document must keep most of the window
MIN_DOCUMENT_TOKENS = 32


@dataclass(frozen=True)
class Window:
    """One encoder input: the query, then a run of one document's words."""

    doc: int  # document index in the caller's flat document list
    input_ids: list[int]  # [CLS] query [SEP] words [SEP]
    query_tokens: int  # tokens up to and including the first [SEP] (token type 0)
    word_of_token: list[int]  # per input id: word index in its document, -1 outside the document part


def query_ids(tokenizer: PreTrainedTokenizerBase, query: str, max_length: int) -> list[int]:
    """The query's sub-token ids, at most MAX_QUERY_TOKENS (and a quarter of the window)."""
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    return ids[: min(MAX_QUERY_TOKENS, max_length // 4)]


def word_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    """Sub-token ids of each word; an empty tokenisation becomes [UNK] (a word is never unseen)."""
    if not words:
        return []
    return [ids if ids else [tokenizer.unk_token_id] for ids in word_token_ids(tokenizer, words)]


def document_windows(
    tokenizer: PreTrainedTokenizerBase,
    query: Sequence[int],
    ids_per_word: Sequence[Sequence[int]],
    sentence_of_word: np.ndarray,
    doc: int,
    max_length: int,
) -> list[Window]:
    """Windows covering every word of one document, cut at sentence starts where a
    sentence fits, else between words; a word longer than a window is truncated."""
    capacity = max(max_length - len(query) - 3, MIN_DOCUMENT_TOKENS)
    head = [tokenizer.cls_token_id, *query, tokenizer.sep_token_id]
    windows, start = [], 0
    while start < len(ids_per_word):
        end, used, last_cut = start, 0, -1
        while end < len(ids_per_word) and used + min(len(ids_per_word[end]), capacity) <= capacity:
            if end > start and sentence_of_word[end] != sentence_of_word[end - 1]:
                last_cut = end
            used += min(len(ids_per_word[end]), capacity)
            end += 1
        if end < len(ids_per_word) and last_cut > start:
            end = last_cut
        ids, owner = list(head), [-1] * len(head)
        for w in range(start, end):
            piece = list(ids_per_word[w])[:capacity]
            ids.extend(piece)
            owner.extend([w] * len(piece))
        ids.append(tokenizer.sep_token_id)
        owner.append(-1)
        windows.append(Window(doc, ids, len(head), owner))
        start = end
    if not windows:  # an empty document still gets a relevance score
        windows.append(Window(doc, [*head, tokenizer.sep_token_id], len(head), [-1] * (len(head) + 1)))
    return windows


@dataclass(frozen=True)
class WindowBatch:
    """Padded windows, every tensor [B, T]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    word_of_token: torch.Tensor  # -1 outside the document part and on padding


def pad_windows(windows: Sequence[Window], pad_id: int) -> WindowBatch:
    """Dynamic padding to the longest window, rounded up (ctxcomp.encoder_batches.padded_width)."""
    width = padded_width([len(w.input_ids) for w in windows])
    ids = pad_rows([w.input_ids for w in windows], pad_id, width)
    mask = pad_rows([[1] * len(w.input_ids) for w in windows], 0, width)
    types = pad_rows([[0] * w.query_tokens + [1] * (len(w.input_ids) - w.query_tokens) for w in windows], 0, width)
    owner = pad_rows([w.word_of_token for w in windows], -1, width)
    return WindowBatch(ids, mask, types, owner)
