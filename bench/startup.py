"""Ready means ready: how long `ctxcomp serve` takes to report SERVING, and what each method's
first request costs after it against its tenth.

    python bench/startup.py [--quick] [--preload cascade,llmlingua2] [--requests 10]

Servers start one after the other as subprocesses on loopback ports:
  preloaded  `--preload` as given (the default: the default method and llmlingua2), started
             twice: the same `--requests` different five-paragraph requests of the test
             articles go to the first in one order and to the second in the reverse order, so
             the first request of one server is the tenth of the other. Per method: each of
             the two end requests' time when it came first and when it came tenth (the same
             work; nothing of it was cached, since neither server had seen it), and the median
             of all. The acceptance of the server's preload: each first is no slower than the
             same request sent tenth.
  baseline   `--preload cascade` alone: any other method loads on its first request.
A full run writes its lines to bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Record, header, split_paragraphs
from load import serving
from quality import build_requests

from ctxcomp.client import CtxcompClient

RECORD = Record("startup")


def timed(flags: list[str], methods: list[str], requests) -> tuple[float, dict[str, list[float]]]:
    """Seconds to SERVING, and per method the milliseconds of each request, in the order sent."""
    started = time.perf_counter()
    with serving(*flags) as (_, address), CtxcompClient(address, timeout=300) as client:
        serving_s = round(time.perf_counter() - started, 1)
        times: dict[str, list[float]] = {}
        for name in methods:
            times[name] = []
            for request in requests:
                sent = time.perf_counter()
                client.compress(request.query, list(request.documents), method=name, rate=0.2)
                times[name].append(round(1000 * (time.perf_counter() - sent), 1))
    return serving_s, times


def preloaded_lines(flags: list[str], methods: list[str], requests) -> None:
    serving_a, forward = timed(flags, methods, requests)
    serving_b, backward = timed(flags, methods, requests[::-1])
    for name in methods:
        firsts = [forward[name][0], backward[name][0]]  # requests[0], requests[-1], each sent first
        tenths = [backward[name][-1], forward[name][-1]]  # the same two, each sent last
        RECORD.emit({
            "bench": "startup", "server": "preloaded", "flags": flags, "seconds_to_serving": [serving_a, serving_b],
            "method": name, "requests": len(requests), "first_ms": firsts, "same_request_tenth_ms": tenths,
            "median_ms": statistics.median(forward[name] + backward[name]),
            "first_within_tenth": all(f <= t for f, t in zip(firsts, tenths)),
        })


def baseline_lines(methods: list[str], requests) -> None:
    flags = ["--preload", "cascade"]
    serving_s, times = timed(flags, methods, requests)
    for name in methods:
        RECORD.emit({
            "bench": "startup", "server": "baseline", "flags": flags, "seconds_to_serving": serving_s, "method": name,
            "requests": len(requests), "first_ms": times[name][0], "tenth_ms": times[name][-1],
            "median_ms": statistics.median(times[name]),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the preloaded servers alone, cascade, 3 requests")
    parser.add_argument("--preload", default="cascade,llmlingua2")
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    RECORD.emit(header("startup", "test"))
    methods = ["cascade"] if args.quick else args.preload.split(",")
    n = 3 if args.quick else args.requests
    requests = [r for _, r, _ in build_requests(split_paragraphs("test"), n)]
    preloaded_lines(["--preload", ",".join(methods)], methods, requests)
    if not args.quick:
        baseline_lines(methods, requests)
        print(f"result record: {RECORD.write()}")


if __name__ == "__main__":
    main()
