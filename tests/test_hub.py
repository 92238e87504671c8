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


def test_device_is_checked_and_cpu_by_default(monkeypatch) -> None:
    import torch

    from ctxcomp.hub import ModelHub

    monkeypatch.delenv("CTXCOMP_DEVICE", raising=False)
    assert ModelHub().device == "cpu"
    monkeypatch.setenv("CTXCOMP_DEVICE", "cpu")
    assert ModelHub().device == "cpu"
    with pytest.raises(ValueError, match="use cpu, cuda or cuda:N"):
        ModelHub(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            ModelHub(device="cuda")


def test_serve_refuses_a_device_it_does_not_have() -> None:
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: `--device cuda` is valid here")
    done = subprocess.run([sys.executable, "-m", "ctxcomp.cli", "serve", "--device", "cuda", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "argument --device: device 'cuda': this machine has no CUDA device" in done.stderr


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_methods_and_kv_agree_with_cpu(compressor) -> None:
    from ctxcomp.hub import ModelHub
    from ctxcomp.kv import blob
    from ctxcomp.pipeline import Compressor
    from ctxcomp.types import CompressRequest, Document

    gpu = Compressor(ModelHub(device="cuda"))
    request = CompressRequest(
        "Why did the Vasa sink?",
        (Document("a", "The Vasa sank in 1628 because it was top-heavy. A gust of wind heeled it over."),
         Document("b", "Stockholm weather: rain, then sun.")),
        rate=0.5,
    )
    for method in ("cascade", "llmlingua2", "exit", "recomp_extractive"):
        on_gpu = gpu.compress(CompressRequest(request.query, request.documents, method=method, rate=0.5))
        on_cpu = compressor.compress(CompressRequest(request.query, request.documents, method=method, rate=0.5))
        assert abs(on_gpu.tokens_after - on_cpu.tokens_after) <= 3, method  # bf16 may move a near-tie
    with_kv = gpu.compress(CompressRequest(request.query, request.documents, method="llmlingua2", rate=0.5, return_kv=True))
    keys, _, meta = blob.decode(with_kv.kv.data, expect_fingerprint=gpu.hub.get("downstream_llm").fingerprint)
    assert meta.tokens == keys.shape[2] > 0


def word_level_tokenizer(folder, texts: list[str]):
    """A tokenizer trained here (one token per word or punctuation mark): another LLM's
    tokenizer, with no weights anywhere."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    fast.save_pretrained(folder)
    return fast


def test_a_named_tokenizer_counts_budgets_and_tokens_without_llm_weights(tmp_path) -> None:
    import dataclasses

    from ctxcomp.errors import InvalidRequest
    from ctxcomp.pipeline import Compressor
    from ctxcomp.types import CompressRequest, Document

    docs = ["The Vasa sank in 1628, because it was top-heavy.", "Paris is the capital of France; it rains in autumn."]
    own = word_level_tokenizer(tmp_path / "tok", docs)
    hub = ModelHub(llm_tokenizers={"mine": str(tmp_path / "tok")})
    compressor = Compressor(hub)
    request = CompressRequest("Why did the Vasa sink?", tuple(Document(str(i), d) for i, d in enumerate(docs)),
                              method="recomp_extractive", target_tokens=12, llm="mine")
    result = compressor.compress(request)

    def count(text: str) -> int:
        return len(own(text, add_special_tokens=False)["input_ids"])

    assert result.tokens_before == sum(count(d) for d in docs) == 25  # 13 + 12 words and marks (top - heavy)
    assert 0 < result.tokens_after <= 12
    assert [d.tokens_after for d in result.documents] == [count(d.text) for d in result.documents]
    assert result.llm == "mine"
    assert ("downstream_llm", "model") not in hub.loaded_forms()
    plain = compressor.compress(CompressRequest(request.query, request.documents, method="recomp_extractive"))
    assert plain.tokens_before == sum(hub.count_tokens(docs)) != result.tokens_before  # the server LLM's own
    with pytest.raises(InvalidRequest) as kv:
        compressor.plan(dataclasses.replace(request, return_kv=True))
    assert kv.value.field == "llm"
    with pytest.raises(InvalidRequest) as typo:
        compressor.plan(dataclasses.replace(request, llm="mien"))
    assert "did you mean 'mine'" in typo.value.message


def test_an_unknown_or_kv_llm_names_the_field(compressor) -> None:
    from ctxcomp.errors import InvalidRequest
    from ctxcomp.types import CompressRequest, Document

    documents = (Document("a", "The Vasa sank in 1628."),)
    with pytest.raises(InvalidRequest) as unknown:
        compressor.plan(CompressRequest("Why?", documents, llm="llama3"))
    assert unknown.value.field == "llm" and "loaded none" in unknown.value.message
