"""The EXIT sentence classifier: is this sentence, in its document, useful for the query?

No cross-encoder ships offline (../shared/MODELS.md), and fine-tuning one takes
hours on 2 CPU cores, so the classifier reads the frozen MiniLM sentence
encoder's embeddings of the query, the sentence and its neighbours, plus
lexical evidence that embeddings blur (query words present, IDF-weighted, wh-type
of the question against digits and names in the sentence), through a small MLP
head trained by `train_sentence_classifier.py` and shipped as
`models/sentence_classifier/head.safetensors` (~0.1 MB).

`features()` is shared by training and inference, so both see the same inputs.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

HEAD_DIR = Path(__file__).resolve().parent / "sentence_classifier"
EMBED_DIM = 384

_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"\b1\d{3}\b|\b20\d{2}\b")
_CAPITALIZED = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-z]+")
WH_TYPES = ("how many", "how much", "when", "what year", "who", "where", "which", "why", "how", "what")
SCALAR_FEATURES = (
    "cos_sentence", "cos_previous", "cos_next", "cos_document", "cos_sentence_document",
    "cos_minus_doc_max", "cos_minus_request_max", "cos_rank_in_doc",
    "overlap", "idf_overlap", "window_idf_overlap", "bigram_overlap",
    "has_digit", "has_year", "new_names", "log_words", "relative_position", "is_first",
)
N_FEATURES = EMBED_DIM + len(SCALAR_FEATURES) + len(WH_TYPES) * 3 + 1


def _stopwords() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


def content_words(text: str, stop: frozenset[str]) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(text)) if w not in stop]


def wh_type(query: str) -> int:
    """Index into WH_TYPES of the question's type; len(WH_TYPES) when none matches."""
    lowered = query.lower()
    for i, wh in enumerate(WH_TYPES):
        if re.search(rf"\b{wh}\b", lowered):
            return i
    return len(WH_TYPES)


@dataclass(frozen=True)
class DocumentSentences:
    """One document's sentence texts with their encoder embeddings ([S, 384], L2-normalised)."""

    texts: Sequence[str]
    embeddings: np.ndarray


def features(query: str, query_embedding: np.ndarray, documents: Sequence[DocumentSentences]) -> np.ndarray:
    """[sum S_d, N_FEATURES] float32 features of every sentence of a request, documents in order.

    query_embedding: [384] L2-normalised. Each row sees its sentence, its neighbours,
    its document and the whole request (context-aware, as EXIT).
    """
    stop = _stopwords()
    all_texts = [t for d in documents for t in d.texts]
    if not all_texts:
        return np.zeros((0, N_FEATURES), np.float32)
    q_words = content_words(query, stop)
    q_set = set(q_words)
    q_bigrams = set(zip(q_words, q_words[1:]))
    bags = [content_words(t, stop) for t in all_texts]
    df = Counter(w for bag in bags for w in set(bag))
    idf = {w: math.log((len(bags) + 1) / (df.get(w, 0) + 0.5)) for w in q_set}
    q_mass = sum(idf.values()) or 1.0
    wh = wh_type(query)
    cos_all = np.concatenate([d.embeddings @ query_embedding for d in documents])
    request_max = float(cos_all.max())
    rows, at = [], 0
    for doc in documents:
        n = len(doc.texts)
        if not n:
            continue
        emb = doc.embeddings
        cos = cos_all[at : at + n]
        mean = emb.mean(0)
        mean /= np.linalg.norm(mean) + 1e-8
        order = np.argsort(-cos, kind="stable")
        rank = np.empty(n)
        rank[order] = np.arange(n)
        for i in range(n):
            bag = bags[at + i]
            present = set(bag) & q_set
            window = set(bag).union(*(bags[at + j] for j in (i - 1, i + 1) if 0 <= j < n)) & q_set
            text = doc.texts[i]
            names = {m for m in _CAPITALIZED.findall(text) if m.lower() not in q_set and m.lower() not in stop}
            has_digit = float(bool(_DIGIT.search(text)))
            scalars = [
                cos[i],
                cos[i - 1] if i > 0 else 0.0,
                cos[i + 1] if i + 1 < n else 0.0,
                float(mean @ query_embedding),
                float(mean @ emb[i]),
                cos[i] - cos.max(),
                cos[i] - request_max,
                rank[i] / max(n - 1, 1),
                len(present) / max(len(q_set), 1),
                sum(idf[w] for w in present) / q_mass,
                sum(idf[w] for w in window) / q_mass,
                len(set(zip(bag, bag[1:])) & q_bigrams) / max(len(q_bigrams), 1),
                has_digit,
                float(bool(_YEAR.search(text))),
                min(len(names), 5) / 5.0,
                math.log1p(len(bag)) / 4.0,
                i / max(n - 1, 1),
                float(i == 0),
            ]
            wh_onehot = np.zeros(len(WH_TYPES) + 1)
            wh_onehot[wh] = 1.0
            crossed = np.concatenate([wh_onehot[:-1] * has_digit, wh_onehot[:-1] * scalars[14]])
            rows.append(np.concatenate([emb[i] * query_embedding * 10.0, scalars, wh_onehot, crossed]))
        at += n
    return np.asarray(rows, np.float32)


class SentenceHead(nn.Module):
    """MLP over features(): [N, N_FEATURES] -> [N] logits of "useful for the query"."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class SentenceClassifier:
    """The loaded head, its calibrated keep threshold and the encoder it reads."""

    head: SentenceHead
    threshold: float  # probability above which EXIT keeps a sentence
    encoder: Any  # SentenceTransformer
    relevance_threshold: float = 0.0  # best query-sentence cosine below which a request is off-topic

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[N, 384] float32, L2-normalised."""
        if not texts:
            return np.zeros((0, EMBED_DIM), np.float32)
        return self.encoder.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, batch_size=64)

    def best_similarity(self, query: str, documents: Sequence[Sequence[str]]) -> np.ndarray:
        """[D] highest query-sentence cosine per document (selective augmentation's score)."""
        embedded = self.embed([query, *[t for d in documents for t in d]])
        bounds = np.cumsum([0] + [len(d) for d in documents])
        return best_similarity_of(embedded[0], [embedded[1 + bounds[i] : 1 + bounds[i + 1]] for i in range(len(documents))])

    @torch.inference_mode()
    def probabilities(self, query: str, documents: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per document, [S_d] probabilities that each sentence is useful for the query."""
        flat = [t for d in documents for t in d]
        embedded = self.embed([query, *flat])
        bounds = np.cumsum([0] + [len(d) for d in documents])
        docs = [DocumentSentences(d, embedded[1 + bounds[i] : 1 + bounds[i + 1]]) for i, d in enumerate(documents)]
        x = torch.from_numpy(features(query, embedded[0], docs))
        probs = torch.sigmoid(self.head(x)).numpy() if len(x) else np.zeros(0, np.float32)
        return [probs[bounds[i] : bounds[i + 1]] for i in range(len(documents))]


def best_similarity_of(query_embedding: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """[D] highest cosine between the query ([384]) and any sentence ([S_d, 384]) of each document."""
    return np.asarray([float((d @ query_embedding).max()) if len(d) else -1.0 for d in documents])


def load(encoder: Any, head_dir: Path = HEAD_DIR) -> SentenceClassifier:
    from safetensors.torch import load_file

    meta = json.loads((head_dir / "config.json").read_text())
    head = SentenceHead(meta["hidden"])
    head.load_state_dict({k: v.float() for k, v in load_file(head_dir / "head.safetensors").items()})
    head.eval()
    return SentenceClassifier(head, float(meta["threshold"]), encoder, float(meta["relevance_threshold"]))
