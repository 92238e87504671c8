"""Model registry: one offline default per role, overridable by HF id or path.

Nothing is loaded at import time; call the ``load_*`` factories.
"""

from __future__ import annotations

from ctxcomp.models.registry import (
    ROLES,
    LoadedLLM,
    TokenClassifier,
    describe_roles,
    load_kv_transform,
    load_relevance,
    load_llm,
    load_llm_tokenizer,
    load_sentence_encoder,
    load_spacy,
    load_token_classifier,
    load_xrag_projector,
    resolve,
)

__all__ = [
    "ROLES",
    "LoadedLLM",
    "TokenClassifier",
    "describe_roles",
    "load_kv_transform",
    "load_relevance",
    "load_llm",
    "load_llm_tokenizer",
    "load_sentence_encoder",
    "load_spacy",
    "load_token_classifier",
    "load_xrag_projector",
    "resolve",
]
