"""Loaded models, shared by all methods of one process and loaded on first use."""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from ctxcomp import models


_PIECE_MEMO_LIMIT = 500_000


class ModelHub:
    """Loads each model role at most once (thread-safe) and counts downstream-LLM tokens.

    `overrides` maps a role to a HF id or local path, as the CTXCOMP_* variables do.
    """

    def __init__(self, overrides: dict[str, str] | None = None) -> None:
        self.overrides = dict(overrides or {})
        for role in self.overrides:
            models.registry.role_spec(role)
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._piece_counts: dict[str, int] = {}

    def _get(self, role: str, load: Callable[[str | None], Any]) -> Any:
        with self._lock:
            if role not in self._loaded:
                self._loaded[role] = load(self.overrides.get(role))
            return self._loaded[role]

    def token_classifier(self, precision: str = "fp32") -> models.TokenClassifier:
        """The token classifier; precision "bf16" is a bfloat16 copy (about 2x faster on CPUs with AMX/AVX512-BF16)."""
        full = self._get("token_classifier", models.load_token_classifier)
        if precision == "fp32":
            return full
        if precision != "bf16":
            raise ValueError(f"unknown precision {precision!r}; valid: fp32, bf16")
        return self._get("token_classifier_bf16", lambda _: models.registry.to_bfloat16(full))

    def llm(self) -> models.LoadedLLM:
        """The full downstream LLM (KV blobs); loaded only when first asked for."""
        return self._get("llm_model", models.load_llm)

    def llm_tokenizer(self) -> Any:
        return self._get("llm_tokenizer", models.load_llm_tokenizer)

    def sentence_encoder(self) -> Any:
        return self._get("sentence_encoder", models.load_sentence_encoder)

    def sentence_classifier(self) -> Any:
        """The EXIT sentence classifier (head over the sentence encoder)."""
        encoder = self.sentence_encoder()  # first: _get holds the (non-reentrant) lock while loading
        return self._get("sentence_classifier", lambda o: models.load_sentence_classifier(encoder, o))

    def xrag_projector(self) -> Any:
        """The xRAG projector (sentence-encoder embedding -> LLM input embedding)."""
        return self._get("xrag_projector", models.load_xrag_projector)

    def spacy(self) -> Any:
        return self._get("spacy", models.load_spacy)

    def load(self, roles: Sequence[str]) -> None:
        """Load the given roles now (server start-up), so the first request pays nothing."""
        loaders = {
            "token_classifier": self.token_classifier,
            "downstream_llm": self.llm_tokenizer,
            "sentence_encoder": self.sentence_encoder,
            "sentence_classifier": self.sentence_classifier,
            "xrag_projector": self.xrag_projector,
            "spacy": self.spacy,
        }
        for role in roles:
            loaders[role]()

    def loaded_roles(self) -> set[str]:
        with self._lock:
            aliases = {"llm_tokenizer": "downstream_llm", "llm_model": "downstream_llm", "token_classifier_bf16": "token_classifier"}
            return {aliases.get(r, r) for r in self._loaded}

    @property
    def tokenizer_name(self) -> str:
        return models.resolve("downstream_llm", self.overrides.get("downstream_llm")).location

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Downstream-LLM token counts of each text, no special tokens. [N] ints."""
        if not texts:
            return []
        encoded = self.llm_tokenizer()(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_piece_tokens(self, pieces: Sequence[str]) -> list[int]:
        """count_tokens for short, often repeated strings (words), memoised.

        Word costs repeat across documents and requests; only unseen pieces go
        to the tokenizer. The memo is bounded and simply restarts when full.
        """
        memo = self._piece_counts
        unseen = list(dict.fromkeys(p for p in pieces if p not in memo))
        if unseen:
            if len(memo) + len(unseen) > _PIECE_MEMO_LIMIT:
                memo.clear()
            memo.update(zip(unseen, self.count_tokens(unseen)))
        return [memo[p] for p in pieces]
