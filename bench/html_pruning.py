"""HTML pages: ctxcomp's HTML path against text extraction followed by the same method.
(Not bench/html.py: a file named html.py in bench/ would stand in for the standard library's
html module in every bench script.)

    python bench/html_pruning.py [--quick] [--pages 200] [--method cascade] [--split test] [--record NAME]

Pages are SQuAD test-article paragraphs laid out in realistic page templates
(bench/html_pages.py: nav, sidebars of related articles, ads, cookie banners,
scripts, tables, comments, unclosed tags). Each page is one request whose query is a
question about one of its paragraphs. At 5x and 10x the budget is the page's own
downstream-LLM tokens divided by the ratio, the same for every pipeline:
  ctxcomp       the page sent as format="html": clean, block tree, coarse cut by relevance, the method
                over the kept nodes as documents
  trafilatura   trafilatura.extract (main content), then the method on that text
  html2text     html2text of the whole page (markdown), then the method on that text
Also printed once: what each extraction keeps before any compression (tokens and answers).
Prints one JSON object per (ratio, pipeline): gold-answer preservation with a bootstrap
95% interval over pages, tokens kept, and ms per page; then per ratio the paired difference
ctxcomp minus each baseline with its interval (better = interval above 0). A full run is
written as a result record (bench/results/html-SPLIT.json unless named); `--report RECORD`
prints it as the docs show it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import Record, add_split_argument, header, run_line, split_paragraphs
from html_pages import pages as make_pages

from ctxcomp.evaluate import bootstrap_interval
from ctxcomp.pipeline import Compressor
from ctxcomp.types import CompressRequest, Document

RATIOS = (5, 10)
BATCH = 8


def extract_trafilatura(page: str) -> str:
    import trafilatura  # the bench extra's, like html2text: report() needs neither

    return trafilatura.extract(page) or ""


def extract_html2text(page: str) -> str:
    import html2text

    converter = html2text.HTML2Text()
    converter.body_width = 0  # no hard wrapping
    return converter.handle(page)


def kept(text: str, answers: tuple[str, ...]) -> float:
    flat = " ".join(text.split())
    return float(any(" ".join(a.split()) in flat for a in answers))


def compress_all(compressor: Compressor, requests: list[CompressRequest]) -> tuple[list[str], list[int], float]:
    """Texts and tokens kept per request (empty texts stay empty), and ms per request."""
    texts, tokens = [""] * len(requests), [0] * len(requests)
    todo = [i for i, r in enumerate(requests) if r.documents[0].text.strip()]
    started = time.perf_counter()
    for start in range(0, len(todo), BATCH):
        members = todo[start : start + BATCH]
        for i, result in zip(members, compressor.compress_batch([requests[i] for i in members])):
            texts[i], tokens[i] = result.context, result.tokens_after
    return texts, tokens, (time.perf_counter() - started) * 1000.0 / max(1, len(requests))


def report(path: Path) -> str:
    """A result record of this bench as markdown tables."""
    record = json.loads(path.read_text())
    lines = record["lines"]
    head = lines[0]
    rows = {(line["ratio"], line["pipeline"]): line for line in lines if "pipeline" in line}
    differences = {(line["ratio"], line["ctxcomp_minus"]): line for line in lines if "ctxcomp_minus" in line}
    ratios = sorted({ratio for ratio, _ in rows}, key=lambda r: int(r.rstrip("x")))
    baselines = [name for _, name in differences if _ == ratios[0]]
    extraction = [line for line in lines if "extraction_only" in line]

    def cell(value: float, interval: list) -> str:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    out = [f"{run_line(record)}; {head['pages']} pages, method `{head['method']}` for every pipeline; {head['split']}.",
           "", "| ratio | ctxcomp (format html) | " + " | ".join(f"{b} + method" for b in baselines) + " | "
           + " | ".join(f"ctxcomp - {b}" for b in baselines) + " | tokens kept / budget | ms per page (ctxcomp / " + " / ".join(baselines) + ") |",
           "|" + "---|" * (4 + 2 * len(baselines))]
    for ratio in ratios:
        ours = rows[(ratio, "ctxcomp")]
        out.append(
            f"| {ratio} | {cell(ours['preservation'], ours['interval'])} | "
            + " | ".join(cell(rows[(ratio, b)]["preservation"], rows[(ratio, b)]["interval"]) for b in baselines) + " | "
            + " | ".join(f"{differences[(ratio, b)]['difference']:+.3f} [{differences[(ratio, b)]['interval'][0]:+.3f}, "
                         f"{differences[(ratio, b)]['interval'][1]:+.3f}]" for b in baselines)
            + f" | {ours['mean_tokens_kept']:.0f} / {ours['mean_budget']:.0f} | "
            + " / ".join(f"{rows[(ratio, name)]['ms_per_page']:.0f}" for name in ("ctxcomp", *baselines)) + " |")
    out += ["", "Before any compression (the extraction alone): " + "; ".join(
        f"{line['extraction_only']} keeps the answer on {line['preservation']:.3f} of pages in "
        f"{line['mean_tokens']:.0f} tokens" for line in extraction)
        + f" (a page: {extraction[0]['mean_page_tokens']:.0f} tokens)." if extraction else ""]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 pages at 5x (under a minute)")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--method", default="", help="compression method for every pipeline (default: the server's)")
    parser.add_argument("--record", default=None, help="result record name (default html-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    count, ratios = (12, (5,)) if args.quick else (args.pages, RATIOS)
    record = Record("html")
    compressor = Compressor()
    method = args.method or compressor.default_method
    record.emit(header("html", args.split, method=method, pages=count))
    pages = make_pages(split_paragraphs(args.split), count)
    page_tokens = compressor.hub.count_tokens([p.html for p in pages])
    extracted = {
        "trafilatura": [extract_trafilatura(p.html) for p in pages],
        "html2text": [extract_html2text(p.html) for p in pages],
    }
    for name, texts in extracted.items():
        record.emit({
            "extraction_only": name, "mean_page_tokens": float(np.mean(page_tokens)),
            "mean_tokens": float(np.mean(compressor.hub.count_tokens(texts))),
            "preservation": float(np.mean([kept(t, p.answers) for t, p in zip(texts, pages)])),
        })
    warm = pages[0]  # models load and the HTML path runs once outside the timings
    compress_all(compressor, [CompressRequest(warm.question, (Document("page", warm.html, format="html"),), method=method,
                                              target_tokens=max(1, page_tokens[0] // 5))])
    for ratio in ratios:
        budgets = [max(1, round(n / ratio)) for n in page_tokens]
        documents = {
            "ctxcomp": [Document("page", p.html, format="html") for p in pages],
            **{name: [Document("page", t) for t in texts] for name, texts in extracted.items()},
        }
        hits = {}
        for name, docs in documents.items():
            requests = [
                CompressRequest(p.question, (d,), method=method, target_tokens=b) for p, d, b in zip(pages, docs, budgets)
            ]
            texts, tokens, ms = compress_all(compressor, requests)
            hits[name] = np.asarray([kept(t, p.answers) for t, p in zip(texts, pages)])
            by_template = {
                t: float(np.mean([h for h, p in zip(hits[name], pages) if p.template == t]))
                for t in sorted({p.template for p in pages})
            }
            record.emit({
                "ratio": f"{ratio}x", "pipeline": name, "preservation": float(hits[name].mean()),
                "interval": bootstrap_interval(hits[name]), "by_template": by_template,
                "mean_budget": float(np.mean(budgets)), "mean_tokens_kept": float(np.mean(tokens)),
                "over_budget": int(sum(t > b for t, b in zip(tokens, budgets))), "ms_per_page": round(ms, 1),
            })
        for baseline in extracted:
            difference = hits["ctxcomp"] - hits[baseline]
            interval = bootstrap_interval(difference)
            record.emit({
                "ratio": f"{ratio}x", "ctxcomp_minus": baseline, "difference": float(difference.mean()),
                "interval": interval, "better": interval[0] > 0,
            })
    if not args.quick:
        print(f"result record: {record.write(args.record or f'html-{args.split}')}")


if __name__ == "__main__":
    main()
