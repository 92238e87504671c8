"""The scripts in examples/ (the README's snippets, runnable) against a live server: they
cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {  # a line each script must print
    "compress.py": "refused: rate: must be in (0, 1], got 2.0",
    "kv_answer.py": "answer:",
    "langchain_retriever.py": "vasa | ",
    "llamaindex_postprocessor.py": "vasa | ",
    "haystack_pipeline.py": "top-heavy",
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_against_a_live_server(server, script) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), server.address], capture_output=True, text=True,
                          timeout=600, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[script] in done.stdout, done.stdout
