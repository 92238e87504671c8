"""Gold-answer preservation of LLMLingua-2 (our classifier) vs naive baselines.

    python bench/answer_preservation.py [--quick] [--split test] [--record NAME]

On the test articles of SQuAD dev (training/squad.py; the token
classifier trained on the train articles and chose its epoch on dev), each paragraph is one
request compressed to 2x/3x/5x (LLM-token budget, never exceeded). Every
scorer goes through the same budgeted selection (fit_budget); only the word
priorities differ:
  classifier        ctxcomp's trained token classifier (the llmlingua2 method), fp32;
                    classifier_<precision>: the same in each other precision
  fast_classifier   its three-layer student (llmlingua2's classifier "fast"), fp32;
                    fast_classifier_<precision> likewise
  self_information  the shipped LLM's surprisal of each word (Selective Context style)
  random            uniform random priorities (seeded)
  first_k           earlier words first (truncation)
Prints one JSON object per (rate, scorer): preservation = share of questions
with a gold answer string still present in the compressed text, with a bootstrap
95% interval that resamples paragraphs (a paragraph's questions are not independent),
and for every classifier other than the fp32 one its paired difference from it
(`minus_classifier`, with its interval). A full run is written as a result record
(bench/results/answer-preservation-SPLIT.json unless named); `--report RECORD` prints it as
the docs show it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp import text, wordscore
from ctxcomp.evaluate import bootstrap_interval
from ctxcomp.hub import ModelHub
from ctxcomp.selection import fit_budget
from ctxcomp.models import load_llm
from ctxcomp.models.precision import PRECISIONS
from training import squad

RATES = {"2x": 0.5, "3x": 1 / 3, "5x": 0.2}


@torch.inference_mode()
def self_information(llm, words: text.TextSpans) -> np.ndarray:
    """[W] surprisal (nats) of each word under the LLM, summed over its tokens."""
    tok = llm.tokenizer
    enc = tok(words.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [tok.bos_token_id or tok.eos_token_id] + enc["input_ids"]
    logits = llm.model(torch.tensor([ids])).logits[0, :-1].float()
    surprisal = -logits.log_softmax(-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]])
    owner = np.clip(np.searchsorted(words.starts, starts, side="right") - 1, 0, len(words) - 1)
    out = np.zeros(len(words))
    np.add.at(out, owner, surprisal.numpy())
    return out


def preserved(paragraph: squad.Paragraph, text: str) -> tuple[int, int]:
    hits = sum(any(a in text for a in q.answers) for q in paragraph.questions)
    return hits, len(paragraph.questions)


MAIN_COLUMNS = ("classifier", "fast_classifier", "fast_classifier_openvino-int8", "self_information", "random", "first_k")


def report(path: Path) -> str:
    """A result record of this bench as markdown tables: the main scorers, then every classifier form."""
    record = json.loads(path.read_text())
    rows = [line for line in record["lines"] if "scorer" in line]
    by = {(line["target"], line["scorer"]): line for line in rows}
    targets = list(dict.fromkeys(line["target"] for line in rows))
    first = rows[0]

    def cell(line: dict) -> str:
        return f"{line['preservation']:.3f} [{line['interval95'][0]:.3f}, {line['interval95'][1]:.3f}]"

    def minus(line: dict) -> str:
        low, high = line["minus_classifier_interval95"]
        return f"{line['minus_classifier']:+.3f} [{low:+.3f}, {high:+.3f}]"

    columns = [c for c in MAIN_COLUMNS if (targets[0], c) in by]
    out = [f"{run_line(record)}; {first['paragraphs']} paragraphs, {first['questions']} questions.", "",
           "| target | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    out += [f"| {t} | " + " | ".join(cell(by[(t, c)]) for c in columns) + " |" for t in targets]
    forms = [line["scorer"] for line in rows if line["target"] == targets[0] and "classifier" in line["scorer"]]
    out += ["", "Every classifier form against the six-layer fp32 classifier (paired difference) and its "
            "scoring time over all paragraphs:", "",
            "| classifier form | " + " | ".join(f"{t} - classifier" for t in targets) + " | scoring s |",
            "|" + "---|" * (len(targets) + 2)]
    for form in forms:
        differences = " | ".join(minus(by[(t, form)]) if "minus_classifier" in by[(t, form)] else "" for t in targets)
        out.append(f"| {form} | {differences} | {by[(targets[0], form)]['score_seconds']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 paragraphs (under a minute)")
    parser.add_argument("--paragraphs", type=int, default=0, help="limit (0 = every paragraph of the split)")
    parser.add_argument("--record", default=None,
                        help="result record name (default answer-preservation-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    torch.manual_seed(0)
    record = Record("answer_preservation")
    record.emit(header("answer_preservation", args.split))
    paragraphs = split_paragraphs(args.split)
    limit = 60 if args.quick else args.paragraphs
    if limit:
        paragraphs = paragraphs[:limit]
    hub = ModelHub()
    llm = load_llm()
    words = [text.segment_words(p.context) for p in paragraphs]
    scorers, seconds = {}, {}
    for role, prefix in (("token_classifier", "classifier"), ("token_classifier_fast", "fast_classifier")):
        for form in PRECISIONS:  # each classifier in each precision (ctxcomp.models.precision)
            name = prefix if form == "fp32" else f"{prefix}_{form}"
            classifier = hub.token_classifier(role, form)
            wordscore.score_documents(classifier, [w.strings() for w in words[:4]])  # warm-up (int8 compiles here)
            started = time.perf_counter()
            scorers[name] = wordscore.score_documents(classifier, [w.strings() for w in words])
            seconds[name] = time.perf_counter() - started
    started = time.perf_counter()
    scorers["self_information"] = [self_information(llm, w) for w in words]
    seconds["self_information"] = time.perf_counter() - started
    rng = np.random.default_rng(0)
    scorers["random"] = [rng.random(len(w)) for w in words]
    scorers["first_k"] = [-np.arange(len(w), dtype=np.float64) for w in words]
    totals = hub.count_tokens([p.context for p in paragraphs])
    for label, rate in RATES.items():
        hits_of = {}
        for name, priorities in scorers.items():
            hits, asked, kept = [], [], 0
            for para, w, prio, total in zip(paragraphs, words, priorities, totals):
                selection = fit_budget([w], np.asarray(prio, np.float64), hub.count_tokens, int(total * rate), total_tokens=total)
                h, n = preserved(para, selection.rendered[0][0])
                hits.append(h)
                asked.append(n)
                kept += selection.counts[0]
            hits_of[name] = np.asarray(hits)
            paired = {}
            if "classifier" in name and name != "classifier":
                difference = hits_of[name] - hits_of["classifier"]
                paired = {"minus_classifier": round(difference.sum() / sum(asked), 4),
                          "minus_classifier_interval95": bootstrap_interval(difference, asked)}
            record.emit({
                "target": label, "scorer": name, "paragraphs": len(paragraphs), "questions": sum(asked),
                "preservation": round(sum(hits) / sum(asked), 4), "interval95": bootstrap_interval(hits, asked),
                **paired, "achieved_ratio": round(sum(totals) / max(kept, 1), 3),
                "score_seconds": round(seconds.get(name, 0.0), 2),
            })
    if not args.quick:
        print(f"result record: {record.write(args.record or f'answer-preservation-{args.split}')}")


if __name__ == "__main__":
    main()
