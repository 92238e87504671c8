"""Answer quality from soft compression: xRAG and COMI slots vs no and full context.

    python bench/soft_quality.py [--quick] [--questions 300] [--split test] [--record NAME]
    python bench/soft_quality.py --report bench/results/soft-quality-test.json

On SQuAD questions of the test articles (training/squad.py; the projector
trained on the train and dev articles), the shipped LLM (SmolLM2-135M-Instruct,
frozen, greedy) answers from the template the projector was trained with,
"Background: <...>\\nQuestion: q\\nAnswer:", the background being
  none           the question alone ("Question: q\\nAnswer:"), no background line
  none_template  the trained template with an empty background
  xrag_other     one xRAG token of a paragraph of another article: the trained
                 prompt and a soft token in the same place, without the content
                 (what the token's format alone is worth)
  xrag           one xRAG token for the gold paragraph (the trained projector)
  comi_16x       COMI merged slots, 1/16 of the paragraph's tokens
  comi_32x       COMI merged slots, 1/32
  full           the paragraph's text
Every variant goes through the service's own methods (Compressor) and the
client helper that splices soft tokens into inputs_embeds. Prints one JSON
line per variant (EM and F1 with bootstrap 95% intervals, compression), then
which no-context baselines xrag's F1 interval clears. A full run writes them as a result
record, bench/results/soft-quality-SPLIT.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp import generation
from ctxcomp.client import build_inputs_embeds
from ctxcomp.evaluate import bootstrap_interval, exact_and_f1, separated
from ctxcomp.hub import ModelHub
from training import squad
from ctxcomp.models.xrag_projector import QA_TEMPLATE
from ctxcomp.pipeline import Compressor
from ctxcomp.soft import PLACEHOLDER
from ctxcomp.types import CompressRequest, Document

SEED = 11
VARIANT_NAMES = {
    "none": "no context: the question alone", "none_template": "no context: the trained template, empty background",
    "xrag_other": "no context: xRAG token of another article's paragraph", "xrag": "**xRAG, 1 token of the gold paragraph**",
    "comi_16x": "COMI slots, 16x", "comi_32x": "COMI slots, 32x", "full": "full paragraph",
}


def sample(paragraphs: list[squad.Paragraph], n: int) -> list[tuple[squad.Paragraph, squad.Question, squad.Paragraph]]:
    """(gold paragraph, question, a paragraph of another article) triples."""
    rng = random.Random(SEED)
    pairs = [(p, q) for p in paragraphs for q in p.questions]
    rng.shuffle(pairs)
    return [(p, q, rng.choice([o for o in paragraphs if o.article != p.article])) for p, q in pairs[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 questions")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--record", default=None, help="result record name (default soft-quality-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    record = Record("soft_quality")
    record.emit(header("soft_quality", args.split))
    pairs = sample(split_paragraphs(args.split), 16 if args.quick else args.questions)
    hub = ModelHub()
    compressor = Compressor(hub)
    llm = hub.get("downstream_llm")
    started = time.time()
    variants = ("none", "none_template", "xrag_other", "xrag", "comi_16x", "comi_32x", "full")
    prompts: dict[str, list] = {name: [] for name in variants}
    slots: dict[str, list[int]] = {name: [] for name in prompts}
    paragraph_tokens = []
    for paragraph, question, other in pairs:
        n_tokens = hub.count_tokens([paragraph.context])[0]
        paragraph_tokens.append(n_tokens)
        template = QA_TEMPLATE.format(question=question.text)
        prompts["none"].append(_text_embeds(llm, f"Question: {question.text}\nAnswer:"))
        prompts["none_template"].append(_text_embeds(llm, template.replace(PLACEHOLDER, "")))
        prompts["full"].append(_text_embeds(llm, template.replace(PLACEHOLDER, paragraph.context)))
        slots["none"].append(0)
        slots["none_template"].append(0)
        slots["full"].append(n_tokens)
        document = (Document("gold", paragraph.context),)
        for name, source in (("xrag", document), ("xrag_other", (Document("other", other.context),))):
            xrag = compressor.compress(CompressRequest(question.text, source, method="xrag")).soft
            prompts[name].append(build_inputs_embeds(llm, template, xrag)[0])
            slots[name].append(len(xrag.vectors))
        for name, rate in (("comi_16x", 1 / 16), ("comi_32x", 1 / 32)):
            merged = compressor.compress(CompressRequest(question.text, document, method="comi", rate=rate)).soft
            prompt = template.replace(PLACEHOLDER, PLACEHOLDER * len(merged.vectors))
            prompts[name].append(build_inputs_embeds(llm, prompt, merged)[0])
            slots[name].append(len(merged.vectors))
    figures = {}
    for name, embeds in prompts.items():
        replies = generation.greedy_embeds(llm.model, llm.tokenizer, embeds, 16)
        scores = [exact_and_f1(r.split("\n")[0], q.answers) for (_, q, _), r in zip(pairs, replies)]
        used = sum(slots[name])
        figures[name] = {
            "em": round(float(np.mean([e for e, _ in scores])), 4),
            "em_interval95": bootstrap_interval([e for e, _ in scores]),
            "f1": round(float(np.mean([f for _, f in scores])), 4),
            "f1_interval95": bootstrap_interval([f for _, f in scores]),
            "compression": round(sum(paragraph_tokens) / used, 2) if used else None,
            "context_slots": round(used / len(pairs), 2),
        }
    for name, row in figures.items():
        record.emit({"bench": "soft_quality", "variant": name, "questions": len(pairs), **row})
    xrag = figures["xrag"]["f1_interval95"]
    record.emit({"bench": "soft_quality", "xrag_f1_clears": [
        name for name in ("none", "none_template", "xrag_other") if separated(xrag, figures[name]["f1_interval95"]) > 0],
        "elapsed_s": round(time.time() - started, 1)})
    if not args.quick:
        print(f"result record: {record.write(args.record or f'soft-quality-{args.split}')}")


def report(path: Path) -> str:
    """A result record of this bench as the docs show it."""
    record = json.loads(path.read_text())
    rows = [line for line in record["lines"] if "variant" in line]
    clears = next(line["xrag_f1_clears"] for line in record["lines"] if "xrag_f1_clears" in line)
    out = [f"{run_line(record)}; {rows[0]['questions']} questions.", "",
           "| variant | context slots (mean) | compression | EM | F1 [95% CI] |", "|---|---|---|---|---|"]
    for row in rows:
        compression = f"{row['compression']}x" if row["compression"] else "–"
        low, high = row["f1_interval95"]
        out.append(f"| {VARIANT_NAMES.get(row['variant'], row['variant'])} | {row['context_slots']} | {compression} | "
                   f"{row['em']:.3f} | {row['f1']:.3f} [{low:.3f}, {high:.3f}] |")
    out += ["", "The no-context baselines whose F1 interval xRAG's clears: "
            + (", ".join(f"`{name}`" for name in clears) if clears else "none") + "."]
    return "\n".join(out) + "\n"


def _text_embeds(llm, text: str):
    """[T, H] input embeddings of plain text (no soft tokens)."""
    import torch

    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return llm.model.get_input_embeddings()(torch.tensor(ids))


if __name__ == "__main__":
    main()
