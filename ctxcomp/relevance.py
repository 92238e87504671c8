"""Query-aware relevance: one cross-encoder pass scores documents, sentences and words.

Every relevance judgement of the service goes through here: the coarse-to-fine
method, EXIT's sentence decisions, LLMLingua-2's query-aware word scores,
MIG's relevance term, the selective-augmentation gate and each document's
reported score. Stages: segment (words, spaCy sentences) -> windows (query +
at most `window` encoder tokens of one document, cut at sentence starts) ->
encode (windows of all documents of all requests together, length-sorted,
dynamically padded) -> gather (a document's relevance is its best window's; a
sentence's logit pools its tokens; a word's is its sub-tokens' mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ctxcomp import windows as win
from ctxcomp.encoder_batches import batches_by_length
from ctxcomp.cancellation import checkpoint, in_slices
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodItem, MethodOutput
from ctxcomp.selection import empty_results
from ctxcomp.text import TextSpans, segment_words, sentence_of_word, split_sentences
from ctxcomp.types import CompressRequest

if TYPE_CHECKING:
    from ctxcomp.models.registry import RelevanceScorer

MAX_BATCH_TOKENS = 4096  # padded encoder tokens per forward


@dataclass(frozen=True)
class DocumentScores:
    """One document's units and their relevance to the request's query (logits)."""

    words: TextSpans
    sentences: TextSpans
    sentence_of_word: np.ndarray  # [W] int64
    relevance: float  # document head, best window
    sentence_logits: np.ndarray  # [S]
    word_logits: np.ndarray  # [W]

    @property
    def probability(self) -> float:
        return float(sigmoid(np.asarray(self.relevance)))


@dataclass
class _Segmented:
    words: TextSpans
    sentences: TextSpans
    owner: np.ndarray  # [W] sentence of each word
    windows: list[win.Window]


def score(hub: ModelHub, requests: Sequence[CompressRequest]) -> list[tuple[DocumentScores, ...]]:
    """Per request, per document (request order): relevance of documents, sentences and words."""
    scorer = hub.relevance()
    texts = [d.text for r in requests for d in r.documents]
    segmented = segment(hub, scorer, requests, texts)
    windows = [w for s in segmented for w in s.windows]
    doc_logits, sent_logits, word_logits = encode(scorer, segmented, windows)
    checkpoint()
    flat = [
        DocumentScores(s.words, s.sentences, s.owner, float(doc_logits[d]), sent_logits[d], word_logits[d])
        for d, s in enumerate(segmented)
    ]
    bounds = np.cumsum([0] + [len(r.documents) for r in requests])
    return [tuple(flat[bounds[i] : bounds[i + 1]]) for i in range(len(requests))]


def scores_of(hub: ModelHub, items: Sequence[MethodItem]) -> list[tuple[DocumentScores, ...]]:
    """Each item's scores: the pipeline's (item.relevance) where it made them, else one pass
    over the items without."""
    missing = [i for i, item in enumerate(items) if item.relevance is None]
    made = dict(zip(missing, score(hub, [items[i].request for i in missing]))) if missing else {}
    return [item.relevance if item.relevance is not None else made[i] for i, item in enumerate(items)]


def segment(hub: ModelHub, scorer: RelevanceScorer, requests: Sequence[CompressRequest], texts: Sequence[str]) -> list[_Segmented]:
    """Words, sentences and windows of every document of every request (one spaCy pass)."""
    tokenizer = scorer.tokenizer
    sentences = split_sentences(hub.spacy(), texts)
    asked = [win.query_ids(tokenizer, r.query, scorer.max_length) for r in requests]  # once per request, not per document
    queries = [asked[q] for q, r in enumerate(requests) for _ in r.documents]
    out = []
    for d, (text, sents, query) in enumerate(zip(texts, sentences, queries)):
        checkpoint()
        words = segment_words(text)
        owner = sentence_of_word(words, sents)
        ids = win.word_ids(tokenizer, words.strings())
        out.append(_Segmented(words, sents, owner, win.document_windows(tokenizer, query, ids, owner, d, scorer.max_length)))
    return out


@torch.inference_mode()
def encode(scorer: RelevanceScorer, segmented: Sequence[_Segmented], windows: Sequence[win.Window]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """([D] document logits, per document [S_d] sentence logits, per document [W_d] word logits)."""
    model, pad_id = scorer.model, scorer.tokenizer.pad_token_id
    sentence_base = np.cumsum([0] + [max(len(s.sentences), 1) for s in segmented])
    word_base = np.cumsum([0] + [len(s.words) for s in segmented])
    documents = torch.full((len(segmented),), -torch.inf)
    sentences = torch.full((int(sentence_base[-1]),), -torch.inf)
    word_sums, word_counts = torch.zeros(int(word_base[-1])), torch.zeros(int(word_base[-1]))
    max_tokens = MAX_BATCH_TOKENS // 4 if in_slices() else MAX_BATCH_TOKENS
    for batch in batches_by_length([len(w.input_ids) for w in windows], max_tokens):
        checkpoint()
        members = [windows[i] for i in batch]
        padded = win.pad_windows(members, pad_id)
        device = model.heads.document.weight.device
        out = model(padded.input_ids.to(device), padded.attention_mask.to(device), padded.token_type_ids.to(device))
        doc = torch.tensor([w.doc for w in members])
        documents.scatter_reduce_(0, doc, out.document.float().cpu(), "amax")
        owner = padded.word_of_token  # [B, T], -1 outside the document part
        valid = owner >= 0
        global_word = (owner + torch.from_numpy(word_base[doc.numpy()]).unsqueeze(1))[valid]
        word_sums.index_add_(0, global_word, out.token.float().cpu()[valid])
        word_counts.index_add_(0, global_word, torch.ones_like(global_word, dtype=torch.float))
        local_sentence = _sentence_ids(members, segmented, owner, sentence_base)
        present, local = torch.unique(local_sentence[valid], return_inverse=True)
        ids = torch.full_like(owner, -1)
        ids[valid] = local
        logits = model.sentence_logits(out, ids.to(device), len(present)).float().cpu()
        sentences.scatter_reduce_(0, present, logits, "amax")
    words = (word_sums / word_counts.clamp(min=1)).numpy()
    by_sentence = sentences.numpy()  # sliced per document in numpy: a torch slice costs ~20 us each
    return (
        documents.numpy(),
        [by_sentence[sentence_base[d] : sentence_base[d] + len(s.sentences)] for d, s in enumerate(segmented)],
        [words[word_base[d] : word_base[d + 1]] for d in range(len(segmented))],
    )


def _sentence_ids(
    members: Sequence[win.Window], segmented: Sequence[_Segmented], owner: torch.Tensor, base: np.ndarray
) -> torch.Tensor:
    """[B, T] batch-wide sentence id of each document token (meaningless where owner < 0).

    base: [D + 1] first sentence id of each document."""
    rows = []
    for row, window in enumerate(members):
        sentence_of = torch.from_numpy(segmented[window.doc].owner + base[window.doc])
        rows.append(sentence_of[owner[row].clamp(min=0)] if len(sentence_of) else torch.zeros_like(owner[row]))
    return torch.stack(rows)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


# --- selective augmentation -------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    relevant: bool
    document_scores: np.ndarray  # [D] document relevance (probability)
    threshold: float


def judge(
    hub: ModelHub, request: CompressRequest, threshold: float = -1.0, scored: Sequence[DocumentScores] | None = None
) -> Verdict:
    """Is any document relevant to the query? threshold < 0 = the model's calibrated one;
    `scored`: the request's scores when they are already made."""
    if threshold < 0:
        threshold = float(hub.relevance().meta["document_threshold"])
    scored = scored if scored is not None else score(hub, [request])[0]
    scores = np.asarray([d.probability for d in scored])
    return Verdict(bool((scores > threshold).any()), scores, threshold)


def empty_output(request: CompressRequest, verdict: Verdict, tokens_before: Sequence[int]) -> MethodOutput:
    """Every document dropped, with the reason in the note and each document's score."""
    zeros = [0] * len(request.documents)
    documents = empty_results(request, tokens_before, zeros, verdict.document_scores.tolist())
    best = float(verdict.document_scores.max()) if len(verdict.document_scores) else 0.0
    note = (
        f"selective augmentation: no document is relevant to the query "
        f"(best document relevance {best:.3f} <= threshold {verdict.threshold:.3f}); context left empty"
    )
    return MethodOutput(documents, note)
