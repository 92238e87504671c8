"""Soft compression: xRAG tokens, COMI slots, their wire format and the inputs_embeds helper."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctxcomp import soft as soft_tokens
from ctxcomp.client import build_inputs_embeds
from ctxcomp.errors import InvalidRequest
from ctxcomp.methods.comi import allocate_slots
from ctxcomp.soft import SoftTokensRefused
from ctxcomp.types import CompressRequest, Document

PARAGRAPH = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
)
BREAD = "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough over many hours."


def request(method: str, *texts: str, **kwargs) -> CompressRequest:
    docs = tuple(Document(f"d{i}", t) for i, t in enumerate(texts))
    return CompressRequest(query="Who won Super Bowl 50?", documents=docs, method=method, **kwargs)


def test_xrag_returns_one_vector_per_document(compressor, hub) -> None:
    result = compressor.compress(request("xrag", PARAGRAPH, BREAD))
    soft = result.soft
    assert soft.kind == "xrag"
    assert soft.vectors.shape == (2, hub.get("downstream_llm").model.config.hidden_size) and soft.vectors.dtype == torch.float32
    assert soft.document_ids == ("d0", "d1")
    assert soft.model_fingerprint == hub.get("downstream_llm").fingerprint
    assert [d.tokens_after for d in result.documents] == [1, 1] and result.context == ""
    half = compressor.compress(request("xrag", PARAGRAPH, options={"dtype": "float16"})).soft
    assert half.vectors.dtype == torch.float16
    assert torch.allclose(half.vectors.float(), soft.vectors[:1], atol=1e-2, rtol=1e-2)


def test_comi_merges_tokens_into_the_budgeted_number_of_slots(compressor, hub) -> None:
    result = compressor.compress(request("comi", PARAGRAPH, BREAD, rate=1 / 8))
    soft = result.soft
    total = sum(hub.count_tokens([PARAGRAPH, BREAD]))
    assert soft.kind == "comi"
    assert soft.vectors.shape == (int(total / 8), 576)
    assert "d0" in soft.document_ids and set(soft.document_ids) <= {"d0", "d1"}
    assert list(soft.document_ids) == sorted(soft.document_ids)  # slots keep document order
    assert sum(d.tokens_after for d in result.documents) == len(soft.document_ids)
    # The relevant document keeps finer detail than the off-topic one, per token.
    per_doc = {d.id: d.tokens_after / d.tokens_before for d in result.documents}
    assert per_doc["d0"] > per_doc["d1"]
    norms = soft.vectors.norm(dim=1)
    table = hub.get("downstream_llm").model.get_input_embeddings().weight
    assert 0.5 * table.norm(dim=1).mean() < norms.mean() < 2 * table.norm(dim=1).mean()


def test_slot_allocation_follows_mig_and_respects_sizes() -> None:
    sizes = np.asarray([10, 10, 3])
    slots = allocate_slots(np.asarray([0.9, 0.1, 0.8]), sizes, 8, temperature=0.1)
    assert slots.sum() == 8 and (slots <= sizes).all()
    assert slots[0] > slots[1]
    assert allocate_slots(np.asarray([0.5, 0.5]), np.asarray([2, 3]), 100, 0.1).tolist() == [2, 3]


def test_inputs_embeds_splices_vectors_at_the_placeholders(compressor, hub) -> None:
    llm = hub.get("downstream_llm")
    soft = compressor.compress(request("xrag", PARAGRAPH, BREAD)).soft
    embeds = build_inputs_embeds(llm, "A: <xRAG> B: <xRAG> Question?", soft)
    pieces = soft_tokens.prompt_pieces(llm.tokenizer, "A: <xRAG> B: <xRAG> Question?")
    assert embeds.shape == (1, sum(map(len, pieces)) + 2, 576)
    assert torch.equal(embeds[0, len(pieces[0])], soft.vectors[0])
    assert torch.equal(embeds[0, len(pieces[0]) + 1 + len(pieces[1])], soft.vectors[1])
    logits = llm.model(inputs_embeds=embeds).logits
    assert torch.isfinite(logits).all()


def test_placeholder_count_mismatch_is_refused(compressor, hub) -> None:
    soft = compressor.compress(request("xrag", PARAGRAPH, BREAD)).soft
    with pytest.raises(SoftTokensRefused, match="1 placeholder"):
        build_inputs_embeds(hub.get("downstream_llm"), "Background: <xRAG>\nQuestion: who?", soft)


def test_other_models_vectors_are_refused(compressor, hub) -> None:
    soft = compressor.compress(request("xrag", PARAGRAPH)).soft
    foreign = dataclasses.replace(soft, model_fingerprint="0" * 64, model_id="another-llm")
    with pytest.raises(SoftTokensRefused, match="another-llm"):
        build_inputs_embeds(hub.get("downstream_llm"), "Background: <xRAG>", foreign)
    data = soft_tokens.encode(foreign)
    with pytest.raises(SoftTokensRefused, match="made for model another-llm"):
        soft_tokens.decode(data, expect_fingerprint=hub.get("downstream_llm").fingerprint)


def test_corrupt_soft_token_bytes_are_refused(compressor) -> None:
    data = bytearray(soft_tokens.encode(compressor.compress(request("xrag", PARAGRAPH)).soft))
    data[-3] ^= 0xFF
    with pytest.raises(SoftTokensRefused, match="checksum"):
        soft_tokens.decode(bytes(data))
    with pytest.raises(SoftTokensRefused, match="unreadable"):
        soft_tokens.decode(b"not safetensors")


@pytest.mark.parametrize("method, kwargs", [("xrag", {}), ("comi", {"rate": 0.1})])
def test_grpc_round_trip_is_bit_exact(client, compressor, method, kwargs) -> None:
    local = compressor.compress(request(method, PARAGRAPH, BREAD, **kwargs)).soft
    remote = client.compress("Who won Super Bowl 50?", [Document("d0", PARAGRAPH), Document("d1", BREAD)],
                             method=method, **kwargs).soft
    assert remote.kind == method and remote.document_ids == local.document_ids
    assert remote.vectors.dtype == local.vectors.dtype
    assert torch.equal(remote.vectors, local.vectors)
    assert remote.model_fingerprint == local.model_fingerprint


def test_soft_methods_can_only_end_a_chain(compressor) -> None:
    with pytest.raises(InvalidRequest) as err:
        compressor.compress(request("xrag>exit", PARAGRAPH))
    assert err.value.field == "method"
    chained = compressor.compress(request("exit>xrag", PARAGRAPH, BREAD))
    assert chained.soft.vectors.shape[0] == 2


def test_comi_after_a_stage_that_empties_documents(compressor) -> None:
    """recomp_abstractive returns its summary as the first document and empties the rest;
    COMI then merges the summary alone (found by the fuzz test: it raised IndexError)."""
    result = compressor.compress(request("recomp_abstractive>comi", PARAGRAPH, PARAGRAPH))
    assert result.soft.vectors.shape[0] >= 1 and set(result.soft.document_ids) == {result.documents[0].id}


def test_tiny_projector_training_runs_and_loads(tmp_path) -> None:
    from ctxcomp.models import xrag_projector
    from training import train_xrag_projector

    meta = train_xrag_projector.main(["--tiny", "--out", str(tmp_path / "projector"), "--precision", "fp32"])
    loaded = xrag_projector.load(tmp_path / "projector")
    assert loaded.projector(torch.zeros(2, 384)).shape == (2, 576)
    assert loaded.llm_fingerprint == meta["llm_fingerprint"]
