"""Ready means ready: how long `ctxcomp serve` takes to report SERVING, and what each method's
first request costs after it against its tenth.

    python bench/startup.py [--quick] [--preload cascade,llmlingua2] [--requests 10]

Two servers start one after the other as subprocesses on loopback ports:
  preloaded  `--preload` as given (the default: the default method and llmlingua2)
  baseline   `--preload cascade` alone: any other method loads on its first request
Each reports one line per method: the seconds to SERVING, then `--requests` sequential
requests of that method (each a different five-paragraph request of the test articles, so no
cache helps), with the first one's milliseconds, the tenth's and the median of the rest.
The acceptance of the server's preload: on the preloaded server the first is no slower than
the tenth. A full run writes its lines to bench/results/startup.json.
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


def method_lines(server_name: str, flags: list[str], methods: list[str], requests) -> None:
    started = time.perf_counter()
    with serving(*flags) as (_, address), CtxcompClient(address, timeout=300) as client:
        serving_s = round(time.perf_counter() - started, 1)
        for name in methods:
            times = []
            for request in requests:
                sent = time.perf_counter()
                client.compress(request.query, list(request.documents), method=name, rate=0.2)
                times.append(round(1000 * (time.perf_counter() - sent), 1))
            RECORD.emit({
                "bench": "startup", "server": server_name, "flags": flags, "seconds_to_serving": serving_s,
                "method": name, "first_ms": times[0], "last_ms": times[-1], "requests": len(times),
                "median_after_first_ms": statistics.median(times[1:]) if len(times) > 1 else None,
                "first_within_last": times[0] <= times[-1],
            })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the preloaded server alone, cascade, 3 requests")
    parser.add_argument("--preload", default="cascade,llmlingua2")
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    RECORD.emit(header("startup", "test"))
    methods = ["cascade"] if args.quick else args.preload.split(",")
    n = 3 if args.quick else args.requests
    requests = [r for _, r, _ in build_requests(split_paragraphs("test"), n)]
    method_lines("preloaded", ["--preload", ",".join(methods)], methods, requests)
    if not args.quick:
        method_lines("baseline", ["--preload", "cascade"], methods, requests)
        print(f"result record: {RECORD.write()}")


if __name__ == "__main__":
    main()
