"""The reference llmlingua package's LLMLingua-2 decisions, reproduced (mode="compat").

What the reference does (llmlingua 0.2.2, PromptCompressor.compress_prompt_llmlingua2):
words are the encoder tokenizer's words (WordPiece pieces merged); each document
is cut into chunks of at most 510 encoder tokens, ending at the last "." token;
per chunk, word probabilities are repeated once per LLM token of the word and a
word is kept when its probability exceeds the (100 * (1 - rate) + 1)th
percentile. Two deliberate differences: a chunk without a "." is cut at 510
tokens rather than scored past the encoder's limit (the reference silently
drops those tokens), and the output is the original text's kept spans rather
than the encoder's lowercased detokenisation.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ctxcomp.text import TextSpans
from ctxcomp.tokenization import tokens_with_offsets
from ctxcomp.wordscore import Chunk

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHUNK_END_TOKENS = (".", "\n")
# tokenizer -> {word's encoder ids: its decoded spelling}; bounded, restarts when full.
_SPELLINGS: "weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], str]]" = weakref.WeakKeyDictionary()
_SPELLING_MEMO_LIMIT = 200_000


def forget_spellings() -> None:
    """Drop the word-spelling memo of every tokenizer (see EncodedDocument.word_strings)."""
    _SPELLINGS.clear()


@dataclass(frozen=True)
class EncodedDocument:
    words: TextSpans  # encoder words with their character offsets
    token_ids: np.ndarray  # [T] encoder ids, no specials
    word_of_token: np.ndarray  # [T] word index of each token
    chunk_of_word: np.ndarray  # [W] chunk index (within the document) of each word, set by reference_chunks

    def word_strings(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Each word as the encoder spells it (lowercased for uncased models), as the reference counts it.

        The tokenizer's own decode of each word's ids, memoised per tokenizer: words repeat
        within and across requests, and decoding one word at a time cost 7% of a single
        request's time in the fast mode (bench/llmlingua2_vs_reference.py's requests)."""
        if not len(self.token_ids):
            return []
        ids = self.token_ids.tolist()
        edges = [0, *(np.flatnonzero(np.diff(self.word_of_token)) + 1).tolist(), len(ids)]
        words = [tuple(ids[a:b]) for a, b in zip(edges, edges[1:])]
        memo = _SPELLINGS.setdefault(tokenizer, {})
        spelled = {w: memo.get(w) for w in words}  # local: another thread may clear the memo meanwhile
        unseen = [w for w, spelling in spelled.items() if spelling is None]
        if unseen:
            spelled.update(zip(unseen, tokenizer.batch_decode([list(w) for w in unseen])))
            if len(memo) + len(unseen) > _SPELLING_MEMO_LIMIT:
                memo.clear()
            memo.update((w, spelled[w]) for w in unseen)
        return [spelled[w] for w in words]  # type: ignore[misc]


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> EncodedDocument:
    ids, offsets, words = tokens_with_offsets(tokenizer, text)
    word_of_token = np.asarray(words, dtype=np.int64) if len(ids) else np.zeros(0, np.int64)
    # Renumber densely: pre-tokenizer word ids skip words that produced no token.
    if len(word_of_token):
        word_of_token = np.concatenate([[0], np.cumsum(np.diff(word_of_token) != 0)])
    n_words = int(word_of_token[-1]) + 1 if len(ids) else 0
    starts = np.full(n_words, np.iinfo(np.int64).max)
    ends = np.zeros(n_words, np.int64)
    np.minimum.at(starts, word_of_token, offsets[:, 0])
    np.maximum.at(ends, word_of_token, offsets[:, 1])
    return EncodedDocument(TextSpans(text, starts, ends), ids, word_of_token, np.zeros(n_words, np.int64))


def reference_chunks(tokenizer: PreTrainedTokenizerBase, doc: EncodedDocument, doc_index: int, max_length: int) -> list[Chunk]:
    """Chunks as the reference cuts them (see module doc); fills doc.chunk_of_word."""
    end_ids = set(tokenizer.convert_tokens_to_ids(list(CHUNK_END_TOKENS))) - {tokenizer.unk_token_id}
    limit = max_length - 2
    ids = doc.token_ids.tolist()
    n = len(ids)
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        if start + limit > n - 1:
            stop = n
        else:
            end = start + limit
            for back in range(end - start):
                if ids[end - back] in end_ids:
                    end -= back
                    break
            stop = min(end + 1, start + limit)
        owners = doc.word_of_token[start:stop]
        doc.chunk_of_word[owners] = len(chunks)
        chunks.append(
            Chunk(
                doc_index,
                int(owners[0]),
                [tokenizer.cls_token_id, *ids[start:stop], tokenizer.sep_token_id],
                [-1, *owners.tolist(), -1],
            )
        )
        start = stop
    return chunks


def percentile_keep(probs: np.ndarray, costs: np.ndarray, chunk_of_word: np.ndarray, rate: float) -> np.ndarray:
    """[W] bool keep decisions, one percentile threshold per chunk, as the reference.

    probs: [W] word probabilities (forced words already at 1.0); costs: [W] LLM
    tokens per word, the weight of each word in the percentile.
    """
    reduce_rate = max(0.0, 1.0 - rate)
    if reduce_rate <= 0:
        return np.ones(len(probs), bool)
    keep = np.zeros(len(probs), bool)
    for chunk in np.unique(chunk_of_word):
        members = np.flatnonzero(chunk_of_word == chunk)
        p = probs[members]
        threshold = np.percentile(np.repeat(p, costs[members]), int(100 * reduce_rate + 1))
        keep[members] = (p > threshold) | ((threshold == 1.0) & (p == threshold))
    return keep
