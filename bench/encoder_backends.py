"""Which runtime runs our encoders fastest on this CPU: torch, ONNX Runtime or OpenVINO, fp32 and int8.

    python bench/encoder_backends.py [--quick] [--paragraphs 200] [--threads 2] [--record NAME]

The fast path of the encoders is chosen by measurement, and this is the measurement. The token
classifier (the model the compat path shares with the reference; the relevance model and
the sentence encoder are the same MiniLM-L6 shape) scores the test articles' paragraphs in
the pipeline's two shapes, one paragraph per call and 16 length-sorted paragraphs per
call, in:
- torch fp32 (the baseline of every ratio), torch bf16, and torch int8 (ctxcomp/models/int8.py:
  what `precision: int8` runs);
- ONNX Runtime fp32 and int8: the graph after onnxruntime.transformers' BERT fusions,
  int8 by `quantize_dynamic` (per-channel int8 weights, activations quantized per call);
- OpenVINO fp32 and int8: the `openvino-fp32` and `openvino-int8` precisions
  (ctxcomp/models/openvino_encoder.py: the token classifier compiled whole by OpenVINO, f32 inference
  hint; int8 = static int8, ctxcomp/models/openvino_int8.py: int8 weights per output channel,
  activation ranges calibrated on the shipped sample text, the FFN output's activations
  quantized per call by the CPU plugin).
Each line: words/s, the ratio to torch fp32 measured in the same run, and how often each
word's keep/drop decision at rate 0.33 (the top third of each paragraph's words by keep
probability) matches torch fp32's.

Needs the `bench` extra (onnxruntime, onnx, onnxscript) and openvino. ONEDNN_MAX_CPU_ISA
limits torch's and OpenVINO's oneDNN (OpenVINO's capabilities drop FP16 under it), not
ONNX Runtime's own kernels (MLAS picks AMX by itself where the CPU has it): read the int8
ORT figures with the header's cpu_flags. A full run is written as a result record
(bench/results/encoder-backends.json unless named); `--report RECORD` prints it as the docs
show it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import common
import numpy as np
import torch

from ctxcomp.models import precision, registry
from ctxcomp.models.openvino_encoder import INPUTS

RATE = 0.33
BATCH = 16
BACKENDS = ("torch_fp32", "torch_bf16", "torch_int8", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8")


class Logits(torch.nn.Module):
    """The classifier's forward with the three inputs as positional tensors (what export traces)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # a new module starts in training mode, and export would restore that on `model`

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """The classifier as ONNX: plain, BERT-fused, and fused + int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    ids = torch.ones(2, 16, dtype=torch.long)
    names = list(INPUTS)
    plain, fused, quantized = folder / "plain.onnx", folder / "fused.onnx", folder / "fused_int8.onnx"
    torch.onnx.export(Logits(model), (ids, ids, ids * 0), plain, input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "rows", 1: "tokens"} for n in [*names, "logits"]}, dynamo=False, opset_version=17)
    config = model.config
    optimizer.optimize_model(str(plain), model_type="bert", num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size).save_model_to_file(str(fused))
    quantize_dynamic(fused, quantized, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": 1})  # fused ops carry no inferred output type
    return {"plain": plain, "fused": fused, "fused_int8": quantized}


def runners(classifier, onnx: dict[str, Path], threads: int) -> dict[str, Callable[[], Callable[[dict], np.ndarray]]]:
    """backend name -> build() -> f(numpy feed) -> logits [rows, tokens, 2]."""

    def torch_form(precision_name):
        def build():
            form = Logits(precision.convert(classifier, precision_name).model)  # openvino-int8 calibrates through its tokenizer

            def run(feed):
                with torch.inference_mode():
                    return form(*(torch.from_numpy(feed[k]) for k in INPUTS)).float().numpy()
            return run
        return build

    def ort_form(name):
        def build():
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            runtime = ort.InferenceSession(str(onnx[name]), options, providers=["CPUExecutionProvider"])
            return lambda feed: runtime.run(None, feed)[0]
        return build

    return {
        "torch_fp32": torch_form("fp32"), "torch_bf16": torch_form("bf16"), "torch_int8": torch_form("int8"),
        "ort_fp32": ort_form("fused"), "ort_int8": ort_form("fused_int8"),
        "openvino_fp32": torch_form("openvino-fp32"), "openvino_int8": torch_form("openvino-int8"),
    }


def batches(tokenizer, paragraphs: list[str], rows: int) -> list[tuple[dict, list[list[int | None]]]]:
    """Length-sorted, padded feeds of `rows` paragraphs, with each row's word index per token."""
    words = sorted((p.split() for p in paragraphs), key=len)
    out = []
    for start in range(0, len(words), rows):
        encoded = tokenizer(words[start : start + rows], is_split_into_words=True, truncation=True,
                            max_length=512, padding=True, return_tensors="np")
        feed = {k: encoded[k].astype(np.int64) for k in INPUTS}
        out.append((feed, [encoded.word_ids(i) for i in range(len(feed["input_ids"]))]))
    return out


def keep_decisions(logits: np.ndarray, word_ids: list[list[int | None]]) -> np.ndarray:
    """Each row's words kept at RATE (top third by mean sub-token keep probability), concatenated."""
    probs = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), -1)[..., 1].numpy()
    kept = []
    for row, owners in enumerate(word_ids):
        n = max(w for w in owners if w is not None) + 1
        sums, counts = np.zeros(n), np.zeros(n)
        for token, w in enumerate(owners):
            if w is not None:
                sums[w] += probs[row, token]
                counts[w] += 1
        score = sums / np.maximum(counts, 1)
        keep = np.zeros(n, bool)
        keep[np.argsort(-score, kind="stable")[: max(1, round(RATE * n))]] = True
        kept.append(keep)
    return np.concatenate(kept)


def measure(run, feeds, repeats: int) -> tuple[float, np.ndarray]:
    """(best seconds over the feeds after one warm-up pass, keep decisions)."""
    decisions = np.concatenate([keep_decisions(run(feed), owners) for feed, owners in feeds])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for feed, _owners in feeds:
            run(feed)
        best = min(best, time.perf_counter() - started)
    return best, decisions


def measure_alone(args: argparse.Namespace) -> None:
    """Child process: time one backend at one call shape; seconds and decisions to --result."""
    torch.set_num_threads(args.threads)
    classifier = registry.load_token_classifier()
    onnx = {name: Path(args.onnx) / f"{name}.onnx" for name in ("plain", "fused", "fused_int8")}
    run = runners(classifier, onnx, args.threads)[args.backend]()
    paragraphs = [p.context for p in common.split_paragraphs("test")][: args.paragraphs]
    seconds, decisions = measure(run, batches(classifier.tokenizer, paragraphs, args.rows), args.repeats)
    np.savez(args.result, seconds=seconds, decisions=decisions)


BACKEND_NAMES = {
    "torch_fp32": "torch fp32", "torch_bf16": "torch bf16", "torch_int8": "torch int8 (`int8`)",
    "ort_fp32": "ONNX Runtime fp32 (BERT fusions)", "ort_int8": "ONNX Runtime int8 (`quantize_dynamic`, per-channel)",
    "openvino_fp32": "OpenVINO fp32 (`openvino-fp32`)", "openvino_int8": "OpenVINO int8, static (`openvino-int8`)",
}


def report(path: Path) -> str:
    """A result record of this bench as a markdown table: each runtime at both call shapes."""
    record = json.loads(path.read_text())
    rows = [line for line in record["lines"] if "backend" in line]
    shapes = sorted({line["paragraphs_per_call"] for line in rows})
    by = {(line["backend"], line["paragraphs_per_call"]): line for line in rows}
    out = [f"{common.run_line(record)}; {rows[0]['paragraphs']} test paragraphs, {record['lines'][0]['threads']} "
           "threads; ratio to torch fp32 in the same run (words/s in parentheses).", "",
           "| runtime | " + " | ".join(f"{rows_per} per call" for rows_per in shapes) + " | keep agreement with fp32 |",
           "|" + "---|" * (len(shapes) + 2)]
    for backend in dict.fromkeys(line["backend"] for line in rows):
        cells = [f"{by[(backend, n)]['ratio']:.2f}x ({by[(backend, n)]['words_per_s']:,})" for n in shapes]
        out.append(f"| {BACKEND_NAMES.get(backend, backend)} | " + " | ".join(cells)
                   + f" | {by[(backend, shapes[0])]['keep_agreement_with_fp32']:.4f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 paragraphs, one timed pass")
    parser.add_argument("--paragraphs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    for hidden in ("--export-to", "--backend", "--onnx", "--result"):  # what the child processes are told
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--record", default=None, help="result record name (default encoder-backends; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
    elif args.export_to:
        export(registry.load_token_classifier().model, Path(args.export_to))
    elif args.backend:
        measure_alone(args)
    else:
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """Every backend at both call shapes, each timed in a process of its own: a runtime's
    threads, or torch.onnx's export (which left torch's int8 path 28% slower in the same
    process), never touch another's figures."""
    paragraphs = 40 if args.quick else args.paragraphs
    n_words = sum(len(p.context.split()) for p in common.split_paragraphs("test")[:paragraphs])
    record = common.Record("encoder_backends")
    record.emit(common.header("encoder_backends", "test", torch=torch.__version__, threads=args.threads))
    child = [sys.executable, __file__, "--paragraphs", str(paragraphs), "--threads", str(args.threads),
             "--repeats", str(1 if args.quick else 3)]
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([*child, "--export-to", folder], check=True, stdout=subprocess.DEVNULL)
        for rows in (1, BATCH):
            results = {}
            for name in BACKENDS:
                result = Path(folder) / f"{name}-{rows}.npz"
                subprocess.run([*child, "--backend", name, "--onnx", folder, "--rows", str(rows), "--result", str(result)],
                               check=True, stdout=subprocess.DEVNULL)
                results[name] = np.load(result)
            baseline = results["torch_fp32"]
            for name, found in results.items():
                record.emit({
                    "backend": name, "paragraphs_per_call": rows, "paragraphs": paragraphs,
                    "words_per_s": round(n_words / float(found["seconds"])),
                    "torch_fp32_words_per_s": round(n_words / float(baseline["seconds"])),
                    "ratio": round(float(baseline["seconds"]) / float(found["seconds"]), 2),
                    "keep_agreement_with_fp32": round(float((found["decisions"] == baseline["decisions"]).mean()), 4),
                })
    if not args.quick:
        print(f"result record: {record.write(args.record or 'encoder-backends')}")


if __name__ == "__main__":
    main()
