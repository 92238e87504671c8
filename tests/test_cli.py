"""The command line as a user runs it: real subprocesses, real models."""

from __future__ import annotations

import json
import subprocess
import sys

from ctxcomp.cli import parse_options, read_jsonl


def run_cli(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ctxcomp.cli", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_compress_reads_jsonl_from_stdin_and_prints_json() -> None:
    lines = [
        json.dumps({"query": "Who painted the Mona Lisa?"}),
        json.dumps({"id": "p1", "text": "The Mona Lisa was painted by Leonardo da Vinci in the early 1500s.", "metadata": {"k": "v"}}),
        json.dumps("A second document given as a bare string about the Louvre museum in Paris."),
    ]
    done = run_cli("compress", "--json", "--target-tokens", "12", stdin="\n".join(lines))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [d["id"] for d in out["documents"]] == ["p1", "1"]
    assert out["documents"][0]["metadata"] == {"k": "v"}
    assert 0 < out["tokens_after"] <= 12
    assert isinstance(out["ratio"], float)


def test_compress_reports_bad_input_without_a_traceback() -> None:
    done = run_cli("compress", "--rate", "2", stdin=json.dumps("text") + "\n")
    assert done.returncode == 2
    assert "rate: must be in (0, 1]" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_serves_and_prints_a_compressed_context() -> None:
    done = run_cli("demo")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "server health: SERVING" in done.stdout
    assert "# method=llmlingua2 tokens" in done.stdout
    assert "Vasa" in done.stdout


def test_read_jsonl_and_options_parsing() -> None:
    query, docs = read_jsonl(['{"query": "q"}', '"plain"', '{"text": "t", "id": 7}', ""], None)
    assert query == "q" and [(d.id, d.text) for d in docs] == [("0", "plain"), ("7", "t")]
    assert parse_options(["rate=0.5", "force_tokens=[\"a\"]", "aggregation=first"]) == {
        "rate": 0.5,
        "force_tokens": ["a"],
        "aggregation": "first",
    }
