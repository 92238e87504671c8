"""The docs' figures are the result records': every marked block renders again to itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_figure_block_in_the_docs_is_its_record_rendered() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "render_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_docs_mark_their_figures_with_records_that_exist() -> None:
    import re

    blocks = [m for page in (ROOT / "docs").glob("*.md")
              for m in re.findall(r"<!-- record: ([^ ]+) -->", page.read_text())]
    assert blocks, "no docs page shows a result record"
    assert all((ROOT / path).exists() for path in blocks), blocks
