"""The proto-field fuzz test at bench scale: 10,000 hypothesis cases (CI runs 150).

    python bench/fuzz.py [--quick]

Runs tests/service/test_reliability.py::test_fuzzed_requests_never_fail_internally against
a real loopback server and prints one JSON object: cases, outcome and seconds.
A failure means a request produced INTERNAL (or a rejection not naming its field).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 cases (under a minute)")
    parser.add_argument("--cases", type=int, default=10_000)
    args = parser.parse_args()
    cases = 500 if args.quick else args.cases
    repo = Path(__file__).resolve().parents[1]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "tests/service/test_reliability.py::test_fuzzed_requests_never_fail_internally",
         "-p", "no:randomly", "--hypothesis-seed=0"],
        cwd=repo, env={**os.environ, "CTXCOMP_FUZZ_EXAMPLES": str(cases)}, capture_output=True, text=True,
    )
    print(json.dumps({"cases": cases, "passed": done.returncode == 0, "seconds": round(time.perf_counter() - started, 1),
                      "tail": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]}))
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
