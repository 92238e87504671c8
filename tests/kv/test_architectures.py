"""The architecture matrix: tiny random-weight models built from each architecture's config
(no download), our prefill against the model's own forward, cache and greedy decoding.

Under pytest on a CPU-only machine the prefill's attention is the Triton kernel run by
Triton's interpreter (conftest sets TRITON_INTERPRET), so the kernel itself is checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctxcomp.errors import NotAvailable
from ctxcomp.kv import blob
from ctxcomp.kv.architectures import ADAPTERS, adapter_for
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.reuse import blend, concatenate, rerotate

CHECKOUT = Path(__file__).resolve().parents[2]  # training/ runs from the checkout root
VOCAB = 512
ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


def tiny(model_type: str, head_dim: int = 64, kv_heads: int = 2, rope: str = "default", **extra):
    """A 2-layer random model of the architecture; 8 query heads, `kv_heads` KV heads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rope_parameters = {"rope_theta": 10000.0, "rope_type": "default", **ROPE_SCALINGS.get(rope, {})}
    config = AutoConfig.for_model(
        model_type, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=VOCAB, initializer_range=0.2,
        max_position_embeddings=48, rope_parameters=rope_parameters, **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def llm_of(model):
    """What blob_from_prefill needs of a ctxcomp.models.LoadedLLM."""
    from pathlib import Path
    from types import SimpleNamespace

    fingerprint = f"tiny-{model.config.model_type}-{model.config.head_dim}-{model.config.num_key_value_heads}"
    return SimpleNamespace(model=model, fingerprint=fingerprint, path=Path(fingerprint))


def ids(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def own_forward(model, input_ids):
    with torch.no_grad():
        out = model(input_ids, use_cache=True)
    return out.logits[:, -1], [(layer.keys, layer.values) for layer in out.past_key_values.layers]


MATRIX = [(arch, head_dim, kv) for arch in ("llama", "mistral", "qwen2", "qwen3") for head_dim in (64, 128) for kv in (8, 2, 1)]


@pytest.mark.parametrize(("arch", "head_dim", "kv_heads"), MATRIX)
def test_prefill_equals_the_models_own_forward(arch, head_dim, kv_heads) -> None:
    model = tiny(arch, head_dim, kv_heads)
    tokens = ids(40)
    result = prefill(model, tokens)
    logits, layers = own_forward(model, tokens)
    torch.testing.assert_close(result.last_logits, logits, atol=2e-4, rtol=2e-4)
    for (k, v), ours_k, ours_v in zip(layers, result.keys, result.values):
        torch.testing.assert_close(ours_k, k, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours_v, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rope", list(ROPE_SCALINGS))
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_scaled_rope_is_the_models_own(arch, rope) -> None:
    """Positions past original_max_position_embeddings, where the scalings differ from plain RoPE."""
    model = tiny(arch, 64, 2, rope)
    tokens = ids(60)  # dynamic scaling changes its frequencies past 48 positions
    result = prefill(model, tokens)
    logits, layers = own_forward(model, tokens)
    torch.testing.assert_close(result.last_logits, logits, atol=2e-4, rtol=2e-4)
    for (k, _), ours in zip(layers, result.keys):
        torch.testing.assert_close(ours, k, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("arch", "rope"), [("llama", "default"), ("llama", "llama3"), ("llama", "yarn"), ("qwen3", "default"),
                                            ("mistral", "default"), ("qwen2", "linear")])
def test_greedy_continuation_from_our_blob_is_the_models_own(arch, rope) -> None:
    model = tiny(arch, 64, 2, rope)
    tokens = ids(30, seed=4)
    llm = llm_of(model)
    data = blob_from_prefill(prefill(model, tokens[:, :-1]), llm, tokens[0, :-1].tolist(), codec="fp16")
    cache, meta = cache_from_blob(data, llm)
    assert meta.tokens == 29 and meta.rope_inv_freq
    with torch.no_grad():
        ours = model.generate(tokens, past_key_values=cache, max_new_tokens=12, do_sample=False)
        theirs = model.generate(tokens, max_new_tokens=12, do_sample=False)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "int4"])
@pytest.mark.parametrize(("arch", "rope"), [("qwen3", "default"), ("llama", "yarn")])
def test_blobs_round_trip_through_every_codec(arch, rope, codec) -> None:
    model = tiny(arch, 128, 2, rope)
    tokens = ids(40, seed=2)
    result = prefill(model, tokens)
    llm = llm_of(model)
    keys, values, meta = blob.decode(blob_from_prefill(result, llm, tokens[0].tolist(), codec=codec), expect_fingerprint=llm.fingerprint)
    tolerance = {"fp16": 2e-3, "bf16": 2e-2, "int8": 2e-2, "int4": 0.25}[codec]
    for layer, (k, v) in enumerate(zip(result.keys, result.values)):
        scale = k.abs().max()
        assert (keys[layer] - k[0]).abs().max() <= tolerance * scale
        assert (values[layer] - v[0]).abs().max() <= tolerance * v.abs().max()
    assert blob.meta_rope(meta).inv_freq.tolist() == result.rope.inv_freq.tolist()
    assert meta.rope_attention_scaling == result.rope.attention_scaling


@pytest.mark.parametrize(("arch", "rope"), [("llama", "default"), ("llama", "llama3"), ("llama", "yarn"), ("qwen3", "linear")])
def test_reposition_and_blend_use_the_models_rope(arch, rope) -> None:
    model = tiny(arch, 64, 2, rope)
    a, b = ids(20, seed=5), ids(24, seed=6)
    both = torch.cat([a, b], 1)
    first, second, full = prefill(model, a), prefill(model, b), prefill(model, both)
    stack = lambda r: (torch.stack([k[0] for k in r.keys]), torch.stack([v[0] for v in r.values]))  # noqa: E731
    (ka, va), (kb, vb), (k_full, v_full) = stack(first), stack(second), stack(full)
    # Layer 0's keys depend on the token and its position only: re-rotated, they are the full prefill's.
    torch.testing.assert_close(rerotate(kb[0], a.shape[1], first.rope), k_full[0][:, a.shape[1]:], atol=1e-4, rtol=1e-4)
    k_cat, v_cat = concatenate([(ka, va, 0), (kb, vb, 0)], first.rope)
    k_blend, v_blend = blend(model, both, k_cat, v_cat, recompute_ratio=1.0)
    torch.testing.assert_close(k_blend, k_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(v_blend, v_full, atol=1e-4, rtol=1e-4)


def test_other_architectures_are_refused_by_name() -> None:
    from transformers import AutoConfig

    for model_type in ("gemma2", "gemma3_text", "phi3", "falcon"):
        with pytest.raises(NotAvailable, match=f"architecture '{model_type}'.*supported: llama, mistral, qwen2, qwen3"):
            adapter_for(AutoConfig.for_model(model_type))
    assert sorted(ADAPTERS) == ["llama", "mistral", "qwen2", "qwen3"]


def test_a_context_past_a_sliding_window_is_refused() -> None:
    model = tiny("mistral", sliding_window=16)
    prefill(model, ids(16))  # within the window: exact (the matrix covers it)
    with pytest.raises(NotAvailable, match="sliding window of 16 tokens"):
        prefill(model, ids(17))
    qwen = tiny("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    if any(t == "sliding_attention" for t in qwen.config.layer_types):
        with pytest.raises(NotAvailable, match="sliding window"):
            prefill(qwen, ids(17))


def test_reused_kv_past_a_sliding_window_is_refused_too() -> None:
    from ctxcomp.kv.reuse import blend

    model = tiny("mistral", sliding_window=16)
    done = prefill(model, ids(16))
    keys, values = torch.stack([k[0] for k in done.keys]), torch.stack([v[0] for v in done.values])
    blend(model, ids(16), keys, values, 0.5)  # within the window
    longer = prefill(tiny("mistral"), ids(17))  # any K/V of 17 tokens: the check comes first
    with pytest.raises(NotAvailable, match="sliding window of 16 tokens"):
        blend(model, ids(17), torch.stack([k[0] for k in longer.keys]), torch.stack([v[0] for v in longer.values]), 0.5)


def test_a_server_with_an_unsupported_llm_refuses_kv_requests_by_name(hub, tmp_path) -> None:
    """An operator's Gemma 2 (tiny, random, with the shipped tokenizer) as the server's LLM."""
    import grpc
    from transformers import AutoConfig, AutoModelForCausalLM

    from ctxcomp.client import CtxcompClient
    from ctxcomp.hub import ModelHub
    from ctxcomp.pipeline import Compressor
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    tokenizer = hub.get("downstream_llm").tokenizer
    config = AutoConfig.for_model("gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=32, vocab_size=len(tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    compressor = Compressor(ModelHub({"downstream_llm": str(tmp_path / "gemma")}))
    with BackgroundServer(compressor, ServerConfig(port=0)) as server, CtxcompClient(server.address, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.compress_with_kv("q", ["The Vasa sank in 1628."], method="llmlingua2")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "architecture 'gemma2'" in caught.value.details() and "supported: llama, mistral, qwen2, qwen3" in caught.value.details()
        assert client.compress("q", ["The Vasa sank in 1628."], method="llmlingua2").context  # text still works


@pytest.mark.parametrize(("arch", "rope"), [("qwen3", "default"), ("llama", "llama3")])
def test_kv_transform_calibrates_for_a_supported_architecture(hub, tmp_path, arch, rope) -> None:
    """calibrate_kv_transform on a tiny model of the architecture; its codec then round-trips."""
    import os
    import subprocess
    import sys

    from transformers import AutoConfig, AutoModelForCausalLM

    from ctxcomp import models
    from ctxcomp.kv import transform as kv_transform
    from ctxcomp.models import kv_transform as transform_files

    tokenizer = hub.get("downstream_llm").tokenizer
    rope_parameters = {"rope_theta": 10000.0, "rope_type": "default", **ROPE_SCALINGS.get(rope, {})}
    config = AutoConfig.for_model(arch, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32, vocab_size=len(tokenizer), max_position_embeddings=1024,
                                  rope_parameters=rope_parameters)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CTXCOMP_LLM"] = str(tmp_path / "llm")
    subprocess.run([sys.executable, "-m", "training.calibrate_kv_transform", "--tiny", "--out", str(tmp_path / "t")],
                   check=True, timeout=300, env=env, capture_output=True, cwd=CHECKOUT)
    made = transform_files.load(tmp_path / "t")
    llm = models.load_llm(str(tmp_path / "llm"))
    assert made.llm_fingerprint == llm.fingerprint
    tokens = ids(70, seed=9) % len(tokenizer)
    result = prefill(llm.model, tokens)
    keys, values, _ = blob.decode(blob_from_prefill(result, llm, tokens[0].tolist(), codec="transform", transform=made),
                                  expect_fingerprint=llm.fingerprint, transform=made)
    want_k = kv_transform.to_pre_rope(torch.stack([k[0] for k in result.keys]), result.rope)
    got_k = kv_transform.to_pre_rope(keys, result.rope)
    half_step = made.step * 0.5 * 1.01  # within half a quantization step in the transform's space
    assert (kv_transform.transformed(got_k[:, :, 4:], made.key_matrix, made.key_offset)
            - kv_transform.transformed(want_k[:, :, 4:], made.key_matrix, made.key_offset)).abs().max() <= half_step
    want_v = torch.stack([v[0] for v in result.values])
    assert (kv_transform.transformed(values[:, :, 4:], made.value_matrix, made.value_offset)
            - kv_transform.transformed(want_v[:, :, 4:], made.value_matrix, made.value_offset)).abs().max() <= half_step
