"""ModelHub: one table of roles, each loaded once, every override honoured."""

from __future__ import annotations

import threading

import pytest

from ctxcomp.hub import ModelHub
from ctxcomp.models import registry


def test_each_role_and_form_loads_once(hub) -> None:
    assert hub.get("spacy") is hub.get("spacy")
    tokenizer = hub.get("downstream_llm", "tokenizer")
    assert tokenizer is hub.get("downstream_llm", "tokenizer")
    assert {"spacy", "downstream_llm"} <= hub.loaded_roles() <= set(registry.ROLES)


def test_unknown_roles_and_forms_are_refused(hub) -> None:
    with pytest.raises(ValueError, match="valid roles"):
        hub.get("nope")
    with pytest.raises(ValueError, match="forms: model"):
        hub.get("spacy", "bf16")
    with pytest.raises(ValueError, match="valid roles"):
        ModelHub({"nope": "x"})


def test_concurrent_first_loads_share_one_object() -> None:
    fresh = ModelHub()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(fresh.get("spacy"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(x) for x in seen}) == 1


def test_an_override_to_an_empty_folder_is_unavailable_and_says_why(tmp_path) -> None:
    reasons = ModelHub({"kv_transform": str(tmp_path)}).unavailable(["kv_transform", "spacy"])
    assert len(reasons) == 1 and "kv_transform" in reasons[0] and str(tmp_path) in reasons[0]


def test_preload_form_of_the_llm_is_its_tokenizer() -> None:
    assert registry.role_spec("downstream_llm").preload == "tokenizer"
    fresh = ModelHub()
    fresh.load(["downstream_llm"])
    assert fresh.loaded_roles() == {"downstream_llm"}


def test_count_tokens_matches_the_tokenizer(hub) -> None:
    texts = ["Hello world", "", "Ça va? 日本"]
    expected = [len(ids) for ids in hub.get("downstream_llm", "tokenizer")(texts, add_special_tokens=False)["input_ids"]]
    assert hub.count_tokens(texts) == expected
    assert hub.count_piece_tokens([" world", " world", "Hello"]) == hub.count_tokens([" world", " world", "Hello"])
