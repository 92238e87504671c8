"""The shipped LLM and KV transform, and tiny random-weight Llamas for the KV tests that need only
what the KV code reads of an LLM (those override `llm` with one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 500


@dataclass
class TinyLLM:
    """What the KV code reads of a loaded LLM."""

    model: Any
    fingerprint: str = "tiny-llama-test"
    path: Path = Path("tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[[int], TinyLLM]:
    """build(hidden_size): a 2-layer Llama, 4 query and 2 KV heads, seeded weights."""

    def build(hidden_size: int) -> TinyLLM:
        torch.manual_seed(0)
        config = AutoConfig.for_model(
            "llama", hidden_size=hidden_size, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512,
        )
        return TinyLLM(AutoModelForCausalLM.from_config(config).eval())

    return build



@pytest.fixture(scope="session")
def llm() -> Any:
    """The shipped downstream LLM (SmolLM2-135M-Instruct)."""
    from ctxcomp import models

    return models.load_llm()


@pytest.fixture(scope="session")
def transform() -> Any:
    """The shipped KV transform (with the headpca codec's per-head bases)."""
    from ctxcomp import models

    return models.load_kv_transform()

