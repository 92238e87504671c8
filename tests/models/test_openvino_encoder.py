"""The OpenVINO forms of the encoders: the same outputs as torch where it matters, on the shipped models."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from ctxcomp.encoder_batches import padded_width
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
    assert isinstance(compiled, openvino_encoder.OpenVinoTokenClassifier)  # compiled whole, head included
    assert not isinstance(classifier.model.bert, openvino_encoder.OpenVinoStack)
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
             for op in compiled.compiled.any_shape.get_runtime_model().get_ops()]
    products = sorted(p for kind, p in kinds if kind == "FullyConnected")
    layers = classifier.model.config.num_hidden_layers
    # q, k, v, attention output and FFN input on calibrated u8 inputs; the FFN output on int8
    # weights with its inputs quantized per call; the two-label head in fp32
    assert products == ["f32"] + ["i8"] * layers + ["u8"] * (5 * layers)


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
        compiled(**batch, output_hidden_states=True)


def test_a_base_model_becomes_a_compiled_stack(classifier) -> None:
    """What the relevance scorer and the sentence encoder get inside their torch heads and pooling."""
    stack_only = openvino_encoder.convert(classifier.model.bert, int8=False)
    assert isinstance(stack_only, openvino_encoder.OpenVinoStack)
    batch = classifier.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ours = hidden_states(stack_only, batch["input_ids"], batch["attention_mask"])
    theirs = hidden_states(classifier.model.bert, batch["input_ids"], batch["attention_mask"])
    assert float((ours - theirs).abs().max()) < 1e-4


def hidden_states(stack, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return stack(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]


def test_rows_and_wasteful_batches_run_row_by_row_with_torch_results(classifier) -> None:
    """One row, and a batch whose padding is mostly waste, run row by row; a left-padded batch
    runs as one batch. All give torch's hidden states on the real tokens (fp32 form)."""
    stack, reference = openvino_encoder.convert(classifier.model.bert, int8=False), classifier.model.bert
    batch = classifier.tokenizer([" ".join(TEXTS * 6), TEXTS[1]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] * ids.shape[1] > openvino_encoder.ROW_SPLIT_WASTE * int(mask.sum())
    for rows in (slice(1, 2), slice(0, 2)):
        ours, theirs = hidden_states(stack, ids[rows], mask[rows]), hidden_states(reference, ids[rows], mask[rows])
        assert float((ours - theirs).abs().max()) < 1e-4
    left_mask, left_ids = torch.flip(mask, [1]), torch.flip(ids, [1])  # padding first: not ones then zeros
    assert openvino_encoder.row_lengths(left_mask.numpy()) is None
    assert float((hidden_states(stack, left_ids, left_mask) - hidden_states(reference, left_ids, left_mask)).abs().max()) < 1e-4
    assert stack.compiled.widths_compiled == []  # fp32 rows run at their exact length


def test_int8_rows_run_at_fixed_widths_compiled_on_first_use(classifier) -> None:
    stack = openvino_encoder.convert(classifier.model.bert, int8=True, tokenizer=classifier.tokenizer)
    batch = classifier.tokenizer([" ".join(TEXTS * 6), TEXTS[1]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    short = int(mask[1].sum())
    assert stack.compiled.widths_compiled == []
    one = hidden_states(stack, ids[1:, :short], mask[1:, :short])
    assert stack.compiled.widths_compiled == [32]
    both = hidden_states(stack, ids, mask)  # mostly padding: row by row, the long row at its own width
    assert stack.compiled.widths_compiled == [32, padded_width([int(mask[0].sum())])]
    exact = stack.compiled.any_shape.create_infer_request().infer(  # the same row on the any-shape model
        {"input_ids": ids[1:, :short].numpy(), "attention_mask": mask[1:, :short].numpy(),
         "token_type_ids": torch.zeros_like(ids[1:, :short]).numpy()})[0]
    assert float((one[0] - torch.from_numpy(exact[0])).abs().max()) < 1e-3
    assert torch.equal(both[1, :short], one[0])


def test_int8_rows_give_the_same_outputs_whatever_their_batch(classifier) -> None:
    """A request's output must not depend on its batch-mates: each row's int8 hidden states are the
    same alone and inside a batch that is hardly padding at all (one fp32 would run as one batch)."""
    stack = openvino_encoder.convert(classifier.model.bert, int8=True, tokenizer=classifier.tokenizer)
    long = " ".join(TEXTS * 4)
    texts = [long, long.replace("Swedish", "Danish") + " She was raised in 1961."]
    batch = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] * ids.shape[1] <= openvino_encoder.ROW_SPLIT_WASTE * int(mask.sum())
    together = hidden_states(stack, ids, mask)
    for row in range(len(texts)):
        length = int(mask[row].sum())
        alone = hidden_states(stack, ids[row : row + 1, :length], mask[row : row + 1, :length])
        assert torch.equal(together[row, :length], alone[0])
