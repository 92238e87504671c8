"""The rANS kernels' module: where numba caches them (the codec itself: tests/kv/test_transform.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ctxcomp.kv.rans import numba_cache_folder


def test_a_read_only_package_caches_in_the_first_writable_folder(tmp_path: Path) -> None:
    locked, free = tmp_path / "locked", tmp_path / "free"
    writable = lambda folder: folder != locked  # noqa: E731 - as os.access would say on a read-only root
    assert numba_cache_folder(True, [locked, free], writable) is None  # numba's own place next to the code
    assert numba_cache_folder(False, [locked, free], writable) == free
    assert numba_cache_folder(False, [locked], writable) is None  # nothing writable: kernels are not cached


def test_the_kernels_compile_and_run_where_the_cache_folder_was_given(tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "from ctxcomp.kv import transform\n"
        "codes = np.arange(-40, 40, dtype=np.int32).reshape(1, 2, 40)\n"
        "coded = transform.entropy_encode(codes)\n"
        "assert (transform.entropy_decode(coded, 40, 2) == codes).all()\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert any((tmp_path / "numba").rglob("*.nbi"))  # the kernels were cached there
