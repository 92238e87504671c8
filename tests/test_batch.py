"""`ctxcomp batch`: resumable runs, the Ray runner, embeddings index, per-record errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ctxcomp.batch import JobConfig, run
from ctxcomp.errors import InvalidRequest

SENTENCES = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "Oxygen is a chemical element with symbol O and atomic number 8, a member of the chalcogen group.",
    "The Amazon rainforest covers most of the Amazon basin of South America, some 5,500,000 square kilometres.",
]


def write_corpus(path: Path, n: int, with_queries: bool = True) -> Path:
    with path.open("w") as handle:
        for i in range(n):
            record = {"id": f"r{i}", "text": f"Record {i}. {SENTENCES[i % len(SENTENCES)]}"}
            if with_queries and i % 2:
                record["query"] = "Where was it played?"
            handle.write(json.dumps(record) + "\n")
    return path


def read_output(folder: Path):
    return pq.read_table(sorted(folder.glob("part-*.parquet"))).sort_by("id")


def batch_command(tmp_path: Path, *flags: str) -> tuple[list[str], Path]:
    """`ctxcomp batch` over a 2,000-record corpus in 50-record batches, and its output folder."""
    corpus, out = write_corpus(tmp_path / "corpus.jsonl", 2000), tmp_path / "out"
    return [sys.executable, "-m", "ctxcomp.cli", "batch", str(corpus), str(out), *flags, "--rate", "0.5",
            "--batch-size", "50", "--no-progress"], out


def started_until_parts(command: list[str], out: Path, parts: int, stderr: int) -> subprocess.Popen:
    """The command running, once it has written `parts` parts."""
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*.parquet"))) < parts:
        assert run.poll() is None, "the run finished before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run


def test_killed_run_resumes_without_duplicates(tmp_path) -> None:
    command, out = batch_command(tmp_path, "--method", "llmlingua2")
    first = started_until_parts(command, out, 4, subprocess.DEVNULL)
    first.send_signal(signal.SIGKILL)
    first.wait()
    parts_at_kill = len(list(out.glob("part-*.parquet")))
    assert parts_at_kill < 40
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    assert figures["skipped_done"] >= parts_at_kill * 50
    assert figures["skipped_done"] + figures["written"] == 2000
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert set(ids) == {f"r{i}" for i in range(2000)}
    assert not list(out.glob(".part-*"))
    assert all(a <= b for a, b in zip(table.column("tokens_after").to_pylist(), table.column("tokens_before").to_pylist()))


def test_ctrl_c_stops_cleanly_with_status_130_and_a_rerun_resumes(tmp_path) -> None:
    """SIGINT mid-run: no traceback, exit 130, whole parts only; the rerun writes the rest once."""
    command, out = batch_command(tmp_path)
    first = started_until_parts(command, out, 2, subprocess.PIPE)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "run the same command again to resume" in stderr
    stopped = json.loads(stdout.strip().splitlines()[-1])
    assert stopped["written"] == pq.read_table(sorted(out.glob("part-*.parquet"))).num_rows < 2000
    assert not list(out.glob(".part-*"))
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    assert figures["skipped_done"] == stopped["written"] and figures["skipped_done"] + figures["written"] == 2000
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(f"r{i}" for i in range(2000))
    assert set(table.column("method").to_pylist()) == {"cascade"}  # the default method, named


def test_the_query_column_goes_out_as_it_came(tmp_path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    run(corpus, tmp_path / "out", JobConfig(rate=0.5), progress=False)
    table = read_output(tmp_path / "out")
    by_id = dict(zip(table.column("id").to_pylist(), table.column("query").to_pylist()))
    assert by_id == {f"r{i}": ("Where was it played?" if i % 2 else None) for i in range(6)}
    assert set(table.column("method").to_pylist()) == {"cascade"}


def test_ray_runner_matches_the_local_runner(tmp_path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 120)
    config = JobConfig(method="llmlingua2", rate=0.4)
    import ray

    run(corpus, tmp_path / "local", config, engine="local", batch_size=32, progress=False)
    try:
        figures = run(corpus, tmp_path / "ray", config, engine="ray", batch_size=32, workers=2, progress=False)
    finally:
        ray.shutdown()
    assert figures["written"] == 120
    local, distributed = read_output(tmp_path / "local"), read_output(tmp_path / "ray")
    assert local.to_pylist() == distributed.to_pylist()


def test_resume_with_other_settings_is_refused(tmp_path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    run(corpus, tmp_path / "out", JobConfig(rate=0.5), progress=False)
    again = run(corpus, tmp_path / "out", JobConfig(rate=0.5), progress=False)
    assert again["written"] == 0 and again["skipped_done"] == 6
    with pytest.raises(InvalidRequest) as err:
        run(corpus, tmp_path / "out", JobConfig(rate=0.3), progress=False)
    assert err.value.field == "output"


def test_parquet_input_duplicate_ids_embeddings_and_record_errors(tmp_path) -> None:
    import faiss
    import pyarrow as pa

    rows = [{"id": "a", "text": SENTENCES[0], "query": "Who were the Normans?"},
            {"id": "b", "text": SENTENCES[1], "query": ""},  # EXIT needs a query: this record fails alone
            {"id": "a", "text": "a repeated id is written once", "query": "q"},
            {"id": "c", "text": SENTENCES[3], "query": "How large is the Amazon?"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    figures = run(tmp_path / "corpus.parquet", tmp_path / "out", JobConfig(method="exit", embeddings=True), progress=False)
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    errors = dict(zip(table.column("id").to_pylist(), table.column("error").to_pylist()))
    assert errors["a"] is None and errors["c"] is None and "query" in errors["b"]
    assert figures["indexed"] == 2
    index = faiss.read_index(str(tmp_path / "out" / "embeddings.faiss"))
    assert index.ntotal == 2 and index.d == 384
    assert json.loads((tmp_path / "out" / "embeddings_ids.json").read_text()) == ["a", "c"]


def test_records_may_be_html_pages(tmp_path) -> None:
    page = ("<html><body><nav class='menu'><a href='/'>Home</a> <a href='/shop'>Shop</a></nav>"
            f"<article><h1>Normandy</h1><p>{SENTENCES[0]}</p></article><footer>Contact us</footer></body></html>")
    with (tmp_path / "pages.jsonl").open("w") as handle:
        handle.write(json.dumps({"id": "page", "text": page, "query": "Who were the Normans?", "format": "html"}) + "\n")
        handle.write(json.dumps({"id": "text", "text": SENTENCES[1], "query": "Where was it played?"}) + "\n")
    run(tmp_path / "pages.jsonl", tmp_path / "out", JobConfig(method="exit"), progress=False)
    table = read_output(tmp_path / "out")
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert "Normandy" in texts["page"] and "Shop" not in texts["page"] and "<" not in texts["page"]
    assert "Levi's Stadium" in texts["text"]
