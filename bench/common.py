"""What every bench prints first: the machine its timings come from and the data split its
figures come from. Benches report on the test articles; `--split dev` is how a setting is
tuned (the models' training scripts and the model cards say which choices were made there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# Benches run from a checkout (`python bench/NAME.py`); the SQuAD split they share with the
# training scripts is training/squad.py at the checkout root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from training import squad  # noqa: E402

SPLIT_HELP = {
    "test": "test articles: never read by any training or tuning script",
    "dev": "dev articles: where settings are tuned (never reported as a result)",
}


def machine() -> dict:
    """The CPU the timings come from, with the flags that decide its matrix speed."""
    info = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    line = {"cpu": model, "cores": os.cpu_count(), "cpu_flags": [f for f in wanted if f in flags]}
    # oneDNN and MKL told to leave some instructions unused (e.g. AMX, to measure a machine without it)
    limits = {name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if name in os.environ}
    if limits:
        line["isa_limits"] = limits
    return line


def add_split_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=tuple(SPLIT_HELP), default="test",
                        help="SQuAD articles to measure on (default test; dev is for tuning)")


def split_paragraphs(name: str) -> list[squad.Paragraph]:
    return squad.splits().named(name)


def header(bench: str, split: str | None, **extra) -> dict:
    """The first line of a bench's output."""
    line = {"bench": bench, **machine(), **extra}
    if split is not None:
        line["split"] = SPLIT_HELP[split]
    return line


RESULTS = Path(__file__).resolve().parent / "results"


class Record:
    """A bench's output: each line printed as one JSON object as it comes and kept, so that a
    full run can be written as its result record (`write`): the command, the commit the run
    started from (a long run may outlast the checkout's HEAD), the date, the machine and
    device, and every line."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.lines: list[dict] = []
        self.commit = checkout_commit()

    def emit(self, line: dict) -> None:
        print(json.dumps(line), flush=True)
        self.lines.append(line)

    def write(self, name: str | None = None) -> Path:
        record = {
            "bench": self.bench,
            "command": " ".join(["python", *sys.argv]),
            "commit": self.commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "device": device(),
            "lines": self.lines,
        }
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{name or self.bench}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        return path


def run_line(record: dict) -> str:
    """Where a result record's figures come from, as a docs page says it: command, commit,
    date, CPU and its flags, device."""
    head = record["lines"][0]
    return (f"`{record['command']}` at {record['commit'][:12]}, {record['date'][:10]}, {head['cpu']} "
            f"({head['cores']} cores; {', '.join(head['cpu_flags'])}), device {record['device']}")


def checkout_commit() -> str:
    """HEAD of the checkout, "+uncommitted" when tracked files differ from it."""
    root = RESULTS.parent.parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+uncommitted" if dirty else "")


def device() -> str:
    """Where the models ran: the CUDA device's name, or "cpu"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
