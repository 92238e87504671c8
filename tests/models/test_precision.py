"""Encoder precisions: the int8 linear, the bf16/int8/OpenVINO copies of the shipped encoders, and "auto"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctxcomp.hub import ModelHub
from ctxcomp.models import int8, precision
from ctxcomp.models.registry import ROLES


def test_an_int8_linear_is_close_to_its_float_linear_and_row_by_row() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(384, 1536)
    quantized = int8.Int8Linear(linear)
    x = torch.randn(7, 384)
    x[3] *= 50.0  # an outlier row must not coarsen the others' steps
    with torch.inference_mode():
        exact, ours = linear(x), quantized(x)
        error = (ours - exact).norm(dim=1) / exact.norm(dim=1)
        assert float(error.max()) < 0.02
        alone = torch.cat([quantized(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(alone, ours)  # a row's result never depends on its batch mates


def test_quantize_leaves_heads_float_and_the_original_untouched() -> None:
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.Linear(128, 1))
    quantized = int8.quantize(model)
    assert [type(m).__name__ for m in quantized] == ["Int8Linear", "GELU", "Int8Linear", "Linear"]
    assert all(type(m) is not int8.Int8Linear for m in model)


@pytest.mark.parametrize("role", ["token_classifier", "relevance", "sentence_encoder"])
@pytest.mark.parametrize("form", precision.PRECISIONS[1:])
def test_each_encoder_form_runs_and_agrees_with_fp32(role, form) -> None:
    hub = ModelHub(precision="fp32")
    spec_probe = ROLES[role].probe
    reference, converted = hub.get(role, "fp32"), hub.get(role, form)
    assert converted is not reference and hub.get(role) is reference  # fp32 stays the default here
    with torch.inference_mode():
        ours, theirs = spec_probe(converted)(), spec_probe(reference)()
    pick = {"token_classifier": lambda o: o.logits, "relevance": lambda o: o.token,
            "sentence_encoder": lambda o: o["sentence_embedding"]}[role]
    a, b = pick(ours).float().flatten(), pick(theirs).float().flatten()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.99


def test_auto_times_every_form_keeps_the_fastest_and_drops_the_rest(monkeypatch) -> None:
    hub = ModelHub(precision="auto")
    chosen = hub.precision_of("token_classifier")
    picked, timings = hub.precisions["token_classifier"]
    assert picked == chosen and set(timings) == set(precision.PRECISIONS)
    assert all(ms > 0 for ms in timings.values())
    assert {form for role, form in hub._loaded if role == "token_classifier"} == {chosen}
    assert hub.get("token_classifier") is hub.get("token_classifier", chosen)
    assert ModelHub(precision="int8").precision_of("relevance") == "int8"  # an explicit choice is not timed


def test_choose_keeps_fp32_within_noise_and_settles_ties_at_the_batch_shape() -> None:
    # (ms at a lone short request, ms at a batch)
    assert precision.choose({"fp32": [10.4, 104.0], "bf16": [10.0, 100.0], "int8": [12.0, 120.0]}) == "fp32"
    assert precision.choose({"fp32": [13.0, 130.0], "bf16": [15.0, 150.0], "int8": [10.0, 100.0]}) == "int8"
    # The probe that picked openvino-int8 by 51.6 ms against bf16's 52.2: a tie, and bf16 wins the batch.
    assert precision.choose({"fp32": [20.0, 200.0], "bf16": [5.2, 40.0], "openvino-int8": [5.0, 70.0]}) == "bf16"
    # Within noise at the batch shape too: the fixed order decides, whichever timed a hair faster.
    tie = {"fp32": [20.0, 200.0], "openvino-fp32": [6.0, 60.0], "openvino-int8": [5.8, 59.0]}
    assert precision.choose(tie) == "openvino-fp32"
    assert precision.choose({**tie, "openvino-int8": [5.8, 61.0]}) == "openvino-fp32"
    with pytest.raises(ValueError, match="precision"):
        ModelHub(precision="fp8")


def test_list_methods_reports_each_encoders_precision() -> None:
    from ctxcomp.client import CtxcompClient
    from ctxcomp.pipeline import Compressor
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    hub = ModelHub(precision="auto")
    hub.precision_of("relevance")
    with BackgroundServer(Compressor(hub), ServerConfig(port=0)) as server, CtxcompClient(server.address, timeout=60) as client:
        models = {m.role: m for m in client.list_methods().models}
    assert models["relevance"].precision == hub.precisions["relevance"][0]
    assert set(models["relevance"].precision_ms) == set(precision.PRECISIONS)
    assert models["downstream_llm"].precision == ""


def test_a_form_that_cannot_run_for_a_model_is_left_out_of_auto() -> None:
    hub = ModelHub(precision="auto")
    real = ROLES["relevance"].probe

    def probe(scorer, rows, tokens):  # as an override encoder whose int8 copy cannot run would
        if any(isinstance(m, int8.Int8Linear) for m in scorer.model.modules()):
            raise RuntimeError("no int8 kernel for this shape")
        return real(scorer, rows, tokens)

    timings = hub._probe("relevance", probe)
    assert set(timings) == set(precision.PRECISIONS) - {"int8"}
