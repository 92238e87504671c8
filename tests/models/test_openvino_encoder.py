"""The OpenVINO forms of the encoders: the same outputs as torch where it matters, on the shipped models."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from ctxcomp.hub import ModelHub
from ctxcomp.models import openvino_encoder

TEXTS = [
    "The Vasa was a Swedish warship that sank in 1628 because she was top-heavy.",
    "Stockholm weather: cold and windy.",
]


@pytest.fixture(scope="module")
def classifier():
    return ModelHub(precision="fp32").get("token_classifier", "fp32")


def keep_probabilities(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # the second row is padded
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits.softmax(-1)[..., 1] * batch["attention_mask"]


def test_fp32_form_matches_torch_on_padded_batches(classifier) -> None:
    compiled = openvino_encoder.convert(classifier.model, int8=False)
    assert isinstance(compiled.bert, openvino_encoder.OpenVinoStack) and not isinstance(classifier.model.bert, openvino_encoder.OpenVinoStack)
    ours, theirs = keep_probabilities(compiled, classifier.tokenizer), keep_probabilities(classifier.model, classifier.tokenizer)
    assert float((ours - theirs).abs().max()) < 1e-4


def test_int8_form_keeps_the_same_words_near_the_top(classifier) -> None:
    compiled = openvino_encoder.convert(classifier.model, int8=True, tokenizer=classifier.tokenizer)
    ours, theirs = keep_probabilities(compiled, classifier.tokenizer), keep_probabilities(classifier.model, classifier.tokenizer)
    assert float((ours - theirs).abs().max()) < 0.1
    top = lambda p: set(p[0].topk(6).indices.tolist())  # noqa: E731
    assert len(top(ours) & top(theirs)) >= 5


def test_threads_calling_at_once_get_their_own_results(classifier) -> None:
    compiled = openvino_encoder.convert(classifier.model, int8=False)
    batches = [classifier.tokenizer([t], return_tensors="pt") for t in TEXTS]
    with torch.inference_mode():
        expected = [compiled(**b).logits for b in batches]
    results: dict[int, list[torch.Tensor]] = {}

    def call(index: int) -> None:
        with torch.inference_mode():
            results[index] = [compiled(**batches[index % 2]).logits for _ in range(20)]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, outputs in results.items():
        assert all(torch.equal(o, expected[index % 2]) for o in outputs)


def test_int8_form_runs_every_projection_in_int8(classifier) -> None:
    compiled = openvino_encoder.convert(classifier.model, int8=True, tokenizer=classifier.tokenizer)
    kinds = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
             for op in compiled.bert.compiled.any_shape.get_runtime_model().get_ops()]
    products = sorted(p for kind, p in kinds if kind == "FullyConnected")
    layers = classifier.model.config.num_hidden_layers
    # q, k, v, attention output and FFN input on calibrated u8 inputs; the FFN output on int8
    # weights with its inputs quantized per call
    assert products == ["i8"] * layers + ["u8"] * (5 * layers)


def test_int8_form_needs_the_tokenizer_it_calibrates_with(classifier) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        openvino_encoder.convert(classifier.model, int8=True)


def test_a_module_without_a_transformer_stack_is_refused() -> None:
    with pytest.raises(ValueError, match="no transformers base model"):
        openvino_encoder.convert(nn.Sequential(nn.Linear(4, 4)), int8=False)


def test_outputs_the_compiled_graph_cannot_give_are_refused(classifier) -> None:
    compiled = openvino_encoder.convert(classifier.model, int8=False)
    batch = classifier.tokenizer(TEXTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="output_hidden_states"):
        compiled.bert(**batch, output_hidden_states=True)


def hidden_states(stack, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return stack(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]


def test_rows_run_at_fixed_widths_with_the_any_shape_models_results(classifier) -> None:
    """One row, and a batch whose padding is mostly waste, run row by row on fixed-width models
    (each width compiled when first needed); a left-padded batch runs on the any-shape model.
    All give torch's hidden states on the real tokens."""
    compiled = openvino_encoder.convert(classifier.model, int8=False)
    stack, reference = compiled.bert, classifier.model.bert
    long_text = " ".join(TEXTS * 6)
    batch = classifier.tokenizer([long_text, TEXTS[1]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert ids.shape[1] * 2 > openvino_encoder.ROW_SPLIT_WASTE * sum(-(-n // 32) * 32 for n in lengths)
    assert stack.compiled.widths_compiled == []
    one = hidden_states(stack, ids[1:, : lengths[1]], mask[1:, : lengths[1]])
    assert stack.compiled.widths_compiled == [32]
    assert float((one - hidden_states(reference, ids[1:, : lengths[1]], mask[1:, : lengths[1]])).abs().max()) < 1e-4
    split = hidden_states(stack, ids, mask)
    assert stack.compiled.widths_compiled == [32, -(-lengths[0] // 32) * 32]
    assert float((split - hidden_states(reference, ids, mask)).abs().max()) < 1e-4
    left = torch.flip(mask, [1]), torch.flip(ids, [1])  # padding first: not rows of ones then zeros
    assert openvino_encoder.row_lengths(left[0].numpy()) is None
    assert float((hidden_states(stack, left[1], left[0]) - hidden_states(reference, left[1], left[0])).abs().max()) < 1e-4
