"""Prefill through our attention path matches the model's own forward."""

from __future__ import annotations

import pytest
import torch

from ctxcomp.kv.prefill import prefill, to_dynamic_cache


@pytest.fixture(scope="module")
def context_ids(llm, squad_held_out):
    text = squad_held_out[3].context
    return llm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :200]


def test_reference_prefill_matches_full_forward(llm, context_ids) -> None:
    ours = prefill(llm.model, context_ids, backend="reference")
    with torch.inference_mode():
        theirs = llm.model(context_ids, use_cache=True)
    diff = (ours.last_logits - theirs.logits[:, -1].float()).abs().max().item()
    assert diff < 1e-2
    assert ours.last_logits.argmax(-1).item() == theirs.logits[0, -1].argmax().item()
    cache = theirs.past_key_values
    for layer in (0, 14, 29):
        torch.testing.assert_close(ours.keys[layer], cache.layers[layer].keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.values[layer], cache.layers[layer].values, atol=1e-4, rtol=1e-4)


def test_triton_kernel_prefill_matches_full_forward(llm, context_ids) -> None:
    pytest.importorskip("triton")
    ids = context_ids[:, :40]  # the interpreter runs every tile in numpy: keep it short on CPU
    ours = prefill(llm.model, ids, backend="triton")
    assert ours.backend == "triton"
    with torch.inference_mode():
        theirs = llm.model(ids).logits[:, -1].float()
    assert (ours.last_logits - theirs).abs().max().item() < 1e-2


def test_generation_from_prefilled_cache_is_token_identical(llm, context_ids) -> None:
    question = llm.tokenizer(" Question: what is this passage about? Answer:", return_tensors="pt",
                             add_special_tokens=False)["input_ids"]
    full = torch.cat([context_ids, question], dim=1)
    with torch.inference_mode():
        want = llm.model.generate(full, max_new_tokens=8, do_sample=False)[:, full.shape[1]:]
        cache = to_dynamic_cache(prefill(llm.model, context_ids, backend="reference"))
        got = llm.model.generate(full, past_key_values=cache, max_new_tokens=8, do_sample=False)[:, full.shape[1]:]
    assert got.tolist() == want.tolist()
