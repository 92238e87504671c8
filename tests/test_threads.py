"""The CPU policy: intra-op threads from cores and workers, passive OpenMP waits, both logged."""

from __future__ import annotations

import os
import subprocess
import sys

from ctxcomp import threads


def test_threads_split_the_cores_between_workers() -> None:
    assert threads.plan_threads(1, cores=8).threads == 8
    assert threads.plan_threads(3, cores=8).threads == 2
    assert threads.plan_threads(4, cores=2).threads == 1  # never zero
    assert threads.plan_threads(1, requested=3, cores=8).threads == 3
    assert 1 <= threads.available_cores() <= (os.cpu_count() or 1)


def test_importing_ctxcomp_asks_for_passive_waits_unless_told_otherwise() -> None:
    probe = "import os, ctxcomp; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", threads.PASSIVE_SWITCH)}
    run = lambda extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run({}) == "PASSIVE"
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice stands
    assert run({threads.PASSIVE_SWITCH: "0"}) == "None"


def test_batch_says_which_threads_it_uses(tmp_path) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text('{"id": "a", "text": "The Vasa sank in 1628 because it was top-heavy."}\n')
    done = subprocess.run(
        [sys.executable, "-m", "ctxcomp.cli", "batch", str(records), str(tmp_path / "out"), "--method", "llmlingua2",
         "--threads", "1", "--no-progress"],
        capture_output=True, text=True, check=True,
    )
    assert "torch intra-op threads: 1 per worker (as configured" in done.stderr
    assert "OpenMP waits: PASSIVE" in done.stderr


def test_the_kv_transform_inverts_after_torch_threads_were_set() -> None:
    """torch.set_num_threads(2) then a batched LAPACK inverse deadlocked (torch 2.13 CPU, MKL)."""
    probe = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from ctxcomp.models.kv_transform import inverse_per_layer\n"
        "m = torch.randn(30, 192, 192, generator=torch.Generator().manual_seed(0)) + 30 * torch.eye(192)\n"
        "assert torch.allclose(inverse_per_layer(m) @ m, torch.eye(192).expand(30, 192, 192), atol=1e-4)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-500:]
