"""Keep the docs' figures equal to the result records they come from.

    python bench/render_docs.py [--check]

A docs page marks each block of figures with the record it shows:

    <!-- record: bench/results/reader-test.json -->
    ...the tables the bench's --report prints...
    <!-- /record -->

This script renders every marked block (in docs/ and the model cards) again from its record (with the report function of
the bench that wrote it), every `<!-- generated: method options -->` block from the
method configs and every `<!-- generated: settings -->` block from ctxcomp.settings, and
writes the page; `--check` writes nothing and exits 1 when a
page differs from its records (tests/test_docs.py runs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- record: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /record -->)", re.DOTALL)
GENERATED = re.compile(r"(<!-- generated: (?P<what>[a-z ]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.DOTALL)


# A record's "bench" -> the bench script whose report() renders it. Imported only when a page
# shows one of its records: a bench may need packages of the bench extra (html2text, onnx).
REPORTS = {
    "answer_preservation": "answer_preservation", "conversation": "conversation", "encoder_backends": "encoder_backends",
    "html": "html_pruning", "kv": "kv", "kv_reuse": "kv_reuse", "llmlingua2_vs_reference": "llmlingua2_vs_reference",
    "load": "load", "quality": "quality", "reader": "reader", "startup": "startup", "fuzz": "fuzz", "batch": "batch",
    "soft_quality": "soft_quality",
}


def report_of(bench: str) -> Callable[[Path], str]:
    """The report function of the bench that writes records named `bench`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(REPORTS[bench]).report


def method_options() -> str:
    """Every method's options, from the method configs themselves (what `ctxcomp methods` prints)."""
    from ctxcomp import methods
    from ctxcomp.method import describe_options

    out = []
    for name in methods.method_names():
        cls = methods.method_class(name)
        out += [f"**`{name}`**: {cls.description}.", "", "| option | type | default | what |", "|---|---|---|---|"]
        out += [f"| `{o['name']}` | {o['type']} | `{o['default_json']}` | {o['help']} |"
                for o in describe_options(cls.presets["default"])]
        out.append("")
    return "\n".join(out)


def rendered(page: str) -> str:
    def block(match: re.Match) -> str:
        path = ROOT / match.group("path")
        bench = json.loads(path.read_text())["bench"]
        return f"{match.group(1)}{report_of(bench)(path).rstrip()}\n{match.group(4)}"

    page = BLOCK.sub(block, page)
    return GENERATED.sub(lambda m: f"{m.group(1)}{generators()[m.group('what')]().rstrip()}\n{m.group(4)}", page)


def generators() -> dict[str, Callable[[], str]]:
    """`<!-- generated: NAME -->` -> what writes that block, from the code itself."""
    from ctxcomp import settings

    return {"method options": method_options, "settings": settings.markdown}


def pages() -> list[Path]:
    """The pages that may show figures: docs/ and the model cards."""
    return sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "ctxcomp" / "models").glob("*/MODEL_CARD.md"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs from its records")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        fresh = rendered(text)
        if fresh != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(fresh)
    if stale:
        print(("stale: " if args.check else "rendered: ") + ", ".join(map(str, stale)))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
