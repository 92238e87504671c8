"""Encoders compiled by OpenVINO for CPU: the forms "openvino-fp32" and "openvino-int8".

At the pipeline's shapes (one to a few documents per call, a new length every call) torch
spends much of a MiniLM forward dispatching its ~100 small ops; OpenVINO's CPU plugin runs
the same graph as a few fused kernels. `bench/encoder_backends.py` measured the token
classifier one paragraph per call (2-core Xeon without AMX, torch 2.13, OpenVINO 2026.4):
torch fp32 3,634 words/s, OpenVINO fp32 6,069 with the same keep decisions, OpenVINO int8
8,060, and ONNX Runtime below OpenVINO in both; so OpenVINO is the runtime this module wraps.

A token-classification model is compiled whole (stack and head: OpenVinoTokenClassifier, called
as the transformers model is, logits out). Elsewhere only the transformer stack (embeddings +
layers, a transformers base model) is replaced and heads, pooling and everything after stay in
torch, so a converted RelevanceScorer or SentenceTransformer is called exactly as before.
- fp32: the graph converted as it is, run with the f32 inference hint (no bf16 downcast on
  AMX machines).
- int8 (ctxcomp/models/openvino_int8.py): int8 weights per output channel; activations static int8,
  their ranges calibrated on the shipped sample text (ctxcomp/models/calibration/texts.json) through
  the model's own tokenizer, except the FFN output's, which the CPU plugin quantizes per call.
int8 runs every row alone, on a model compiled for one row of a fixed width (each compiled when
first needed: CompiledGraph), so a row's output never depends on its batch-mates; fp32 runs single
rows, and batches that would be mostly padding, row by row at their exact length.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ctxcomp.encoder_batches import PAD_MULTIPLE, padded_width
from ctxcomp.models.registry import calibration_samples

if TYPE_CHECKING:
    import openvino as ov
    from transformers import PreTrainedTokenizerBase

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Traced(nn.Module):
    """A transformers model with positional inputs and one output, what the converter traces: a base
    model's `last_hidden_state`, or a token-classification model's `logits`."""

    def __init__(self, module: nn.Module, output: str) -> None:
        super().__init__()
        self.module, self.output = module, output
        self.eval()  # a new module starts in training mode; tracing in it would keep dropout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        outputs = self.module(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return getattr(outputs, self.output)


def to_openvino(traced: _Traced) -> ov.Model:
    """The traced module as an OpenVINO model with [rows, tokens] int64 inputs, through the
    PyTorch frontend itself: `openvino.convert_model` would also start a telemetry process
    that reports to Google Analytics, which a service must not do on its users' behalf."""
    from openvino import PartialShape, Type
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    example = torch.ones(2, 8, dtype=torch.long)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that transformers' mask checks become constants: they are, since
        # the mask is always an input here (tests/models/test_openvino_encoder.py pads a row).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        decoder = TorchScriptPythonDecoder(traced, example_input=(example, example, example * 0))
    frontend = FrontEndManager().load_by_framework("pytorch")
    model = frontend.load(decoder)
    for index in range(len(INPUTS)):
        place = model.get_place_by_input_index(index)
        model.set_partial_shape(place, PartialShape([-1, -1]))
        model.set_element_type(place, Type.i64)
    return frontend.convert(model)


def calibration_feeds(tokenizer: PreTrainedTokenizerBase, max_length: int = 512) -> list[dict[str, np.ndarray]]:
    """The shipped sample as one-row feeds: each passage alone and after its question."""
    samples = calibration_samples()
    feeds = []
    for sample in samples:
        for texts in ((sample["text"],), (sample["question"], sample["text"])):
            encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_tensors="np")
            ids = encoded["input_ids"].astype(np.int64)
            types = encoded.get("token_type_ids", np.zeros_like(ids))
            feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types.astype(np.int64)})
    return feeds


ROW_SPLIT_WASTE = 1.2  # a padded batch runs row by row when its area is this much over its rows' widths


class CompiledGraph:
    """A converted graph (a stack, or a whole token classifier) compiled for any [rows, tokens] shape
    and, for int8, for single rows at fixed widths.

    The CPU plugin re-prepares every node whenever the input shape differs from the last call's.
    Measured one test paragraph per request, fast mode, no-AMX limits: int8 on fixed widths
    (each row padded as batches are, ctxcomp.encoder_batches.padded_width) 2.5-4% faster per request than the
    any-shape model at each row's exact length, 5-6% on 10-document requests, for 27-135 MB per
    encoder (a width costs 0.15-0.3 s to compile, so each is compiled the first time a row needs
    it). fp32 gained nothing there (six layers: 18.7 ms both ways, the padding's extra products
    cost what the shape changes did) for 575 MB, so its rows run at their exact length."""

    def __init__(self, model: Any, config: dict[str, Any], limit: int, fixed_widths: bool) -> None:
        import openvino as ov

        self._core, self._model, self._config = ov.Core(), model, config
        self._limit = limit if fixed_widths else 0
        # int8 runs every row alone: a padded batch on the any-shape model gives a row slightly
        # different scores than the row alone, enough to flip a kept word, so a request's output
        # would depend on the requests it was batched with (bench/fuzz.py's batch-mates).
        self.rows_alone = fixed_widths
        self.any_shape = self._core.compile_model(model, "CPU", config)
        self._single_rows: dict[int, Any] = {}
        self._lock = threading.Lock()

    def width_for(self, tokens: int) -> int | None:
        """The fixed width a row of `tokens` runs at (None: the any-shape model runs it as it is)."""
        width = padded_width([max(tokens, 1)])
        return width if width <= self._limit else None

    def single_row(self, width: int) -> Any:
        """The model compiled for inputs [1, width], compiled on first use."""
        compiled = self._single_rows.get(width)
        if compiled is None:
            from openvino import PartialShape

            with self._lock:
                if width not in self._single_rows:
                    fixed = self._model.clone()
                    fixed.reshape({name: PartialShape([1, width]) for name in INPUTS})
                    self._single_rows[width] = self._core.compile_model(fixed, "CPU", self._config)
                compiled = self._single_rows[width]
        return compiled

    @property
    def widths_compiled(self) -> list[int]:
        return sorted(self._single_rows)

    def compile_all_widths(self) -> None:
        """Compile every fixed width now (a server's warm-up), so that no request pays one."""
        for width in range(PAD_MULTIPLE, self._limit + 1, PAD_MULTIPLE):
            self.single_row(width)


def compile_module(module: nn.Module, output: str, tokenizer: PreTrainedTokenizerBase | None = None, threads: int | None = None) -> CompiledGraph:
    """A transformers model's `output` compiled by OpenVINO over [rows, tokens] int64 inputs: fp32,
    or static int8 calibrated through `tokenizer` when one is given."""
    converted = to_openvino(_Traced(copy.deepcopy(module).float().eval(), output))
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    limit = min(512, getattr(module.config, "max_position_embeddings", 512))
    if tokenizer is not None:
        from ctxcomp.models import openvino_int8

        statistics = openvino_int8.calibrate(converted, calibration_feeds(tokenizer, limit), config)
        converted = openvino_int8.quantize(converted, statistics)
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(openvino_int8.DYNAMIC_GROUP)
    return CompiledGraph(converted, config, limit, fixed_widths=tokenizer is not None)


def row_lengths(mask: np.ndarray) -> np.ndarray | None:
    """[B] tokens of each row when every row of the [B, T] mask is ones then zeros, else None."""
    lengths = mask.sum(axis=1)
    if not ((mask != 0) == (np.arange(mask.shape[1]) < lengths[:, None])).all():
        return None
    return lengths


class _CompiledRows(nn.Module):
    """Runs a CompiledGraph on numpy rows. int8 runs every row alone (CompiledGraph.rows_alone).
    fp32 runs one row, or a batch whose padding would waste more than ROW_SPLIT_WASTE, row by row,
    and the rest as one batch on the any-shape model (the threshold, measured without AMX on
    length-sorted test paragraphs padded by 15%: 16 rows one by one took 1.10x the batch's time in
    fp32, six layers). Padded positions of a batch run row by row come back as zeros."""

    def __init__(self, compiled: CompiledGraph, config: Any, features: int) -> None:
        super().__init__()
        self.compiled, self.config, self.features = compiled, config, features
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # `.device` of a wrapping model: CPU
        self._requests = threading.local()  # an infer request serves one call at a time

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
            unused: dict[str, Any]) -> torch.Tensor:
        """[B, T, features] outputs of the compiled graph for these inputs."""
        asked = sorted(k for k, v in unused.items() if v is not None and v is not False and k != "return_dict")
        if asked:  # e.g. output_hidden_states=True: the compiled graph gives its one output only
            raise ValueError(f"the OpenVINO encoder computes its one output from ids only; not {', '.join(asked)}")
        ids = input_ids.to(torch.long).numpy()
        mask = attention_mask.to(torch.long).numpy() if attention_mask is not None else np.ones_like(ids)
        types = token_type_ids.to(torch.long).numpy() if token_type_ids is not None else np.zeros_like(ids)
        lengths = row_lengths(mask)
        if lengths is not None and self._row_by_row(ids.shape, lengths):
            out = np.zeros((*ids.shape, self.features), np.float32)
            for row, length in enumerate(lengths.tolist()):
                if length:
                    out[row, :length] = self._one_row(ids[row, :length], types[row, :length])
        else:
            out = self._infer(self.compiled.any_shape, ids, mask, types).copy()
        return torch.from_numpy(out)

    def _row_by_row(self, shape: tuple[int, int], lengths: np.ndarray) -> bool:
        if shape[0] == 1 or self.compiled.rows_alone:
            return True
        widths = [self.compiled.width_for(int(length)) or int(length) for length in lengths]
        return shape[0] * shape[1] > ROW_SPLIT_WASTE * sum(widths)

    def _one_row(self, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
        """[T] ids -> [T, features] outputs (a view of the request's output)."""
        width = self.compiled.width_for(len(ids))
        if width is None:
            return self._infer(self.compiled.any_shape, ids[None], np.ones_like(ids)[None], types[None])[0]
        padded = np.zeros((3, 1, width), np.int64)
        padded[0, 0, : len(ids)], padded[1, 0, : len(ids)], padded[2, 0, : len(ids)] = ids, 1, types
        return self._infer(self.compiled.single_row(width), *padded)[0, : len(ids)]

    def _infer(self, compiled: Any, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        """The compiled model's output for these [B, T] inputs, in this thread's infer request's
        memory (valid until this thread's next call on that model)."""
        requests = getattr(self._requests, "by_model", None)
        if requests is None:
            requests = self._requests.by_model = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        feed = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ascontiguousarray(mask),
                "token_type_ids": np.ascontiguousarray(types)}
        return request.infer(feed)[0]


class OpenVinoStack(_CompiledRows):
    """Stands in for a transformers base model: same keyword call, `last_hidden_state` out."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **unused: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=self.run(input_ids, attention_mask, token_type_ids, unused))


class OpenVinoTokenClassifier(_CompiledRows):
    """Stands in for a transformers token-classification model compiled whole, head included:
    same keyword call, `logits` out. Against its stack alone compiled inside the torch model, one
    test paragraph per call (fast classifier, int8, no-AMX limits): 3.17 ms a call instead of 3.45,
    the difference being transformers' wrapper, the torch head and a [T, hidden] output copied out."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **unused: Any) -> Any:
        from transformers.modeling_outputs import TokenClassifierOutput

        return TokenClassifierOutput(logits=self.run(input_ids, attention_mask, token_type_ids, unused))


def _is_stack(module: nn.Module) -> bool:
    return getattr(module, "base_model", None) is module and hasattr(module, "embeddings")


def convert(module: nn.Module, int8: bool, tokenizer: PreTrainedTokenizerBase | None = None) -> nn.Module:
    """A token-classification model compiled whole by OpenVINO, or a copy of any other `module` with
    its (first) transformer stack compiled; int8 calibrates on the sample text through `tokenizer`
    (the module's own). The head of a classification model is too narrow to quantize
    (ctxcomp.models.int8.MIN_FEATURES): it stays fp32 in the int8 graph, as it stayed in torch."""
    stack = next((m for m in module.modules() if _is_stack(m)), None)
    if stack is None:
        raise ValueError(f"{type(module).__name__}: no transformers base model with embeddings to compile")
    if int8 and tokenizer is None:
        raise ValueError("openvino-int8 calibrates on sample text: it needs the encoder's tokenizer")
    calibration = tokenizer if int8 else None
    if type(module).__name__.endswith("ForTokenClassification"):  # transformers' naming, whatever the head
        return OpenVinoTokenClassifier(compile_module(module, "logits", calibration), module.config, module.config.num_labels)
    replacement = OpenVinoStack(compile_module(stack, "last_hidden_state", calibration), stack.config, stack.config.hidden_size)
    # Copied with the stack mapped to its replacement: the stack's weights are not copied again.
    return copy.deepcopy(module, memo={id(stack): replacement}).eval()
