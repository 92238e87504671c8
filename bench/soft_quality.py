"""Answer quality from soft compression: xRAG and COMI slots vs no and full context.

    python bench/soft_quality.py [--quick] [--questions 120]

On SQuAD questions of the held-apart articles (models/training/squad.py), the shipped LLM
(SmolLM2-135M-Instruct, frozen, greedy) answers from the same template,
"Background: <...>\\nQuestion: q\\nAnswer:", with the background being
  none        the template without a background line
  xrag        one xRAG token for the gold paragraph (the trained projector)
  comi_16x    COMI merged slots, 1/16 of the paragraph's tokens
  comi_32x    COMI merged slots, 1/32
  full        the paragraph's text
Every variant goes through the service's own methods (Compressor) and the
client helper that splices soft tokens into inputs_embeds. Prints one JSON
line per variant (EM, F1, compression ratio) with the no-context figures
beside it, then whether xrag beats no context.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from ctxcomp import generation
from ctxcomp.client import build_inputs_embeds
from ctxcomp.evaluate import exact_and_f1
from ctxcomp.hub import ModelHub
from ctxcomp.models.training import squad
from ctxcomp.models.xrag_projector import QA_TEMPLATE
from ctxcomp.pipeline import Compressor
from ctxcomp.soft import PLACEHOLDER
from ctxcomp.types import CompressRequest, Document

SEED = 11


def sample(n: int) -> list[tuple[squad.Paragraph, squad.Question]]:
    held = squad.split_articles(squad.load_paragraphs())[1]
    pairs = [(p, q) for p in held for q in p.questions]
    random.Random(SEED).shuffle(pairs)
    return pairs[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 questions")
    parser.add_argument("--questions", type=int, default=120)
    args = parser.parse_args()
    pairs = sample(16 if args.quick else args.questions)
    hub = ModelHub()
    compressor = Compressor(hub)
    llm = hub.get("downstream_llm")
    started = time.time()
    prompts: dict[str, list] = {name: [] for name in ("none", "xrag", "comi_16x", "comi_32x", "full")}
    slots: dict[str, list[int]] = {name: [] for name in prompts}
    paragraph_tokens = []
    for paragraph, question in pairs:
        n_tokens = hub.count_tokens([paragraph.context])[0]
        paragraph_tokens.append(n_tokens)
        template = QA_TEMPLATE.format(question=question.text)
        prompts["none"].append(_text_embeds(llm, f"Question: {question.text}\nAnswer:"))
        prompts["full"].append(_text_embeds(llm, template.replace(PLACEHOLDER, paragraph.context)))
        slots["none"].append(0)
        slots["full"].append(n_tokens)
        document = (Document("gold", paragraph.context),)
        xrag = compressor.compress(CompressRequest(question.text, document, method="xrag")).soft
        prompts["xrag"].append(build_inputs_embeds(llm, template, xrag)[0])
        slots["xrag"].append(len(xrag.vectors))
        for name, rate in (("comi_16x", 1 / 16), ("comi_32x", 1 / 32)):
            merged = compressor.compress(CompressRequest(question.text, document, method="comi", rate=rate)).soft
            prompt = template.replace(PLACEHOLDER, PLACEHOLDER * len(merged.vectors))
            prompts[name].append(build_inputs_embeds(llm, prompt, merged)[0])
            slots[name].append(len(merged.vectors))
    figures = {}
    for name, embeds in prompts.items():
        replies = generation.greedy_embeds(llm.model, llm.tokenizer, embeds, 16)
        scores = [exact_and_f1(r.split("\n")[0], q.answers) for (_, q), r in zip(pairs, replies)]
        used = sum(slots[name])
        figures[name] = {
            "em": round(float(np.mean([e for e, _ in scores])), 4),
            "f1": round(float(np.mean([f for _, f in scores])), 4),
            "compression": round(sum(paragraph_tokens) / used, 2) if used else None,
            "context_slots": round(used / len(pairs), 2),
        }
    for name, row in figures.items():
        print(json.dumps({"bench": "soft_quality", "variant": name, "questions": len(pairs), **row,
                          "baseline_none": figures["none"], "baseline_full": figures["full"]}), flush=True)
    print(json.dumps({"bench": "soft_quality", "xrag_beats_no_context": figures["xrag"]["f1"] > figures["none"]["f1"],
                      "elapsed_s": round(time.time() - started, 1)}), flush=True)


def _text_embeds(llm, text: str):
    """[T, H] input embeddings of plain text (no soft tokens)."""
    import torch

    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return llm.model.get_input_embeddings()(torch.tensor(ids))


if __name__ == "__main__":
    main()
