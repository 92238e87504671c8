from __future__ import annotations

import pytest
from pathlib import Path

from ctxcomp import models
from ctxcomp.errors import ModelUnavailable


def test_every_role_has_an_offline_default() -> None:
    rows = {r["role"]: r for r in models.describe_roles()}
    assert set(rows) == {
        "token_classifier", "token_classifier_fast", "sentence_encoder", "relevance", "downstream_llm", "spacy", "xrag_projector", "kv_transform"
    }
    assert all(r["kind"] == "default" for r in rows.values())


def test_missing_model_names_role_tried_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXCOMP_TOKEN_CLASSIFIER", "nobody/not-a-real-model")
    with pytest.raises(ModelUnavailable) as caught:
        models.load_token_classifier()
    message = str(caught.value)
    assert "token_classifier" in message
    assert "nobody/not-a-real-model" in message
    assert "CTXCOMP_TOKEN_CLASSIFIER" in message


def test_relevance_model_from_a_folder_and_missing_delta(tmp_path, hub) -> None:
    import shutil

    from ctxcomp import relevance
    from ctxcomp.hub import ModelHub
    from ctxcomp.models import relevance_model
    from ctxcomp.types import CompressRequest, Document

    shutil.copytree(relevance_model.WEIGHTS_DIR, tmp_path / "relevance")
    request = CompressRequest("Who won?", (Document("a", "Denver won the game 24-10."), Document("b", "Bread needs yeast.")))
    copied = relevance.score(ModelHub({"relevance": str(tmp_path / "relevance")}), [request])[0]
    shipped = relevance.score(hub, [request])[0]
    assert [d.relevance for d in copied] == [d.relevance for d in shipped]
    assert copied[0].relevance > copied[1].relevance
    (tmp_path / "relevance" / relevance_model.DELTA_FILE).unlink()
    with pytest.raises(ModelUnavailable, match="relevance"):
        models.load_relevance(str(tmp_path / "relevance"))


def test_override_by_local_path(tmp_path, hub) -> None:
    """A saved checkpoint folder loads through the same factory and scores the same."""
    from ctxcomp import wordscore

    shipped = hub.get("token_classifier")
    shipped.model.save_pretrained(tmp_path)
    shipped.tokenizer.save_pretrained(tmp_path)
    loaded = models.load_token_classifier(str(tmp_path))
    assert loaded.source.kind == "path"
    words = ["Denver", "Broncos", "won", "Super", "Bowl", "50", "."]
    a = wordscore.score_documents(shipped, [words])[0]
    b = wordscore.score_documents(loaded, [words])[0]
    assert abs(a - b).max() < 1e-5


def test_llm_is_converted_once_and_fingerprinted(hub) -> None:
    tokenizer = hub.get("downstream_llm", "tokenizer")
    source, folder = models.registry.llm_folder()
    assert Path(folder).parent == models.registry.cache_dir() / "llm"
    assert source.kind == "default"
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"]


def test_unknown_role_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="valid roles"):
        models.resolve("reranker")


def test_llm_fingerprint_does_not_depend_on_where_the_model_was_loaded(hub) -> None:
    """Cache paths and library versions differ between machines; the model does not."""
    from ctxcomp.models.registry import llm_fingerprint

    llm = hub.get("downstream_llm")
    config = llm.model.config
    saved = (config._name_or_path, config.transformers_version)
    try:
        config._name_or_path, config.transformers_version = "/elsewhere/cache/llm", "9.9.9"
        assert llm_fingerprint(llm.model, llm.tokenizer, str(llm.path)) == llm.fingerprint
    finally:
        config._name_or_path, config.transformers_version = saved
    from ctxcomp.models import xrag_projector

    assert xrag_projector.load().llm_fingerprint == llm.fingerprint  # the shipped projector matches


def test_the_sentence_splitter_leaves_out_the_embedding_nothing_listens_to() -> None:
    import spacy

    from ctxcomp.models import registry

    nlp = registry.load_spacy()
    assert nlp.pipe_names == ["senter"]  # en_core_web_sm's senter embeds tokens itself
    with_tok2vec = spacy.load(registry.SPACY_PACKAGE, exclude=["parser", "ner", "lemmatizer", "attribute_ruler", "tagger"])
    with_tok2vec.enable_pipe("senter")
    assert "tok2vec" in with_tok2vec.pipe_names
    texts = ["The Vasa sank in 1628. She was top-heavy! Was anyone saved? Most of the crew, yes.",
             "Dr. Smith arrived at 5 p.m. on Jan. 3. He left early; nobody knew why."]
    sentences = lambda pipeline: [[s.text for s in doc.sents] for doc in pipeline.pipe(texts)]  # noqa: E731
    assert sentences(nlp) == sentences(with_tok2vec)
