"""Ready means ready: how long `ctxcomp serve` takes to report SERVING, and what each method's
first request costs after it against its tenth.

    python bench/startup.py [--quick] [--preload cascade,llmlingua2] [--requests 10] [--pairs 3]

Servers start one after the other as subprocesses on loopback ports:
  preloaded  `--preload` as given (the default: the default method and llmlingua2), started in
             `--pairs` pairs: the same `--requests` five-paragraph requests, each of another test
             article (no text of one is in another: a request whose paragraphs a server has seen
             before is a repeat, not a sign of readiness), go to one server of a pair in one order
             and to the other in the reverse order, so the first request of one server is the
             tenth of the other. Per method: each end request's time when it came first and when
             it came tenth (the same request, on servers that had not been sent it; a tenth
             request finds the word memos the requests before it filled), the median of the firsts
             against the median of the same requests sent tenth, the mean of the paired
             differences (first minus tenth) with its bootstrap 95% interval, and the median of
             all. The acceptance of the server's preload: the first is no slower than the tenth,
             that is the interval of the difference reaches 0 or below (one request on 2 cores
             varies by +-5 ms, so a difference within that is no difference). Each client connects
             its channel (one health call) before the first timed request: the connect is the
             client's cost, not a sign of a server that is not ready.
  baseline   `--preload cascade` alone: any other method loads on its first request.
A full run writes its lines to bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pathlib import Path

from common import Record, header, run_line, split_paragraphs
from load import serving
from quality import build_requests

from ctxcomp.client import CtxcompClient
from ctxcomp.evaluate import bootstrap_interval

RECORD = Record("startup")


def one_per_article(built, n: int) -> list:
    """The first n requests of distinct articles (a request's documents are paragraphs of its
    article, named "article#paragraph")."""
    seen, out = set(), []
    for _, request, _ in built:
        article = request.documents[0].id.partition("#")[0]
        if article not in seen:
            seen.add(article)
            out.append(request)
    if len(out) < n:
        raise SystemExit(f"the test articles give {len(out)} requests of distinct articles, not {n}")
    return out[:n]


def timed(flags: list[str], methods: list[str], requests) -> tuple[float, dict[str, list[float]]]:
    """Seconds to SERVING, and per method the milliseconds of each request, in the order sent."""
    started = time.perf_counter()
    with serving(*flags) as (_, address), CtxcompClient(address, timeout=300) as client:
        serving_s = round(time.perf_counter() - started, 1)
        client.health()  # the channel connects here: a client's connect is not the server's readiness
        times: dict[str, list[float]] = {}
        for name in methods:
            times[name] = []
            for request in requests:
                sent = time.perf_counter()
                client.compress(request.query, list(request.documents), method=name, rate=0.2)
                times[name].append(round(1000 * (time.perf_counter() - sent), 1))
    return serving_s, times


def preloaded_lines(flags: list[str], methods: list[str], requests, pairs: int) -> None:
    firsts: dict[str, list[float]] = {name: [] for name in methods}
    tenths: dict[str, list[float]] = {name: [] for name in methods}
    every: dict[str, list[float]] = {name: [] for name in methods}
    serving_s = []
    for _ in range(pairs):
        serving_a, forward = timed(flags, methods, requests)
        serving_b, backward = timed(flags, methods, requests[::-1])
        serving_s += [serving_a, serving_b]
        for name in methods:
            firsts[name] += [forward[name][0], backward[name][0]]  # requests[0], requests[-1], each sent first
            tenths[name] += [backward[name][-1], forward[name][-1]]  # the same two, each sent last
            every[name] += forward[name] + backward[name]
    for name in methods:
        first, tenth = statistics.median(firsts[name]), statistics.median(tenths[name])
        RECORD.emit({
            "bench": "startup", "server": "preloaded", "flags": flags, "seconds_to_serving": serving_s,
            "method": name, "requests": len(requests), "pairs": pairs, "first_ms": firsts[name],
            "same_request_tenth_ms": tenths[name], "first_median_ms": round(first, 1),
            "tenth_median_ms": round(tenth, 1), "median_ms": round(statistics.median(every[name]), 1),
            **paired_judgement(firsts[name], tenths[name]),
        })


def paired_judgement(firsts: list[float], tenths: list[float]) -> dict:
    """The mean of first minus tenth over the same requests, its bootstrap 95% interval, and whether
    the first is no slower (the interval reaches 0 or below)."""
    differences = [a - b for a, b in zip(firsts, tenths)]
    low, high = bootstrap_interval(differences)
    return {"first_minus_tenth_ms": round(statistics.mean(differences), 1),
            "first_minus_tenth_interval95": [round(low, 1), round(high, 1)], "first_no_slower": low <= 0.0}


def baseline_lines(methods: list[str], requests) -> None:
    flags = ["--preload", "cascade"]
    serving_s, times = timed(flags, methods, requests)
    for name in methods:
        RECORD.emit({
            "bench": "startup", "server": "baseline", "flags": flags, "seconds_to_serving": serving_s, "method": name,
            "requests": len(requests), "first_ms": times[name][0], "tenth_ms": times[name][-1],
            "median_ms": statistics.median(times[name]),
        })


def report(path: Path) -> str:
    """A result record of this bench as the docs show it."""
    record = json.loads(path.read_text())
    lines = record["lines"][1:]
    preloaded = [line for line in lines if line.get("server") == "preloaded"]
    baseline = [line for line in lines if line.get("server") == "baseline"]
    out = [f"{run_line(record)}.", ""]
    if preloaded:
        flags, serving_s = " ".join(preloaded[0]["flags"]), preloaded[0]["seconds_to_serving"]
        out += [f"`{flags}`: SERVING after {min(serving_s)}-{max(serving_s)} s ({len(serving_s)} servers). Each end "
                "request timed once sent first and once sent tenth; the methods take turns on the same servers, so "
                f"`{preloaded[0]['method']}` meets text no request had sent and the later methods text the earlier ones "
                "compressed:", "",
                "| method | first, median ms | the same requests tenth, median ms | first minus tenth, ms [paired 95%] | "
                "first no slower | every request, median ms | firsts (ms) | tenths (ms) |", "|---|---|---|---|---|---|---|---|"]
        for line in preloaded:
            low, high = line["first_minus_tenth_interval95"]
            out.append(f"| `{line['method']}` | {line['first_median_ms']:.1f} | {line['tenth_median_ms']:.1f} | "
                       f"{line['first_minus_tenth_ms']:+.1f} [{low:+.1f}, {high:+.1f}] | {'yes' if line['first_no_slower'] else 'no'} | "
                       f"{line['median_ms']:.1f} | {', '.join(f'{t:.0f}' for t in line['first_ms'])} | "
                       f"{', '.join(f'{t:.0f}' for t in line['same_request_tenth_ms'])} |")
    if baseline:
        out += ["", f"Without preloading (`{' '.join(baseline[0]['flags'])}`, SERVING after "
                f"{baseline[0]['seconds_to_serving']} s), a method's models load on its first request:", "",
                "| method | first ms | tenth ms | median ms |", "|---|---|---|---|"]
        out += [f"| `{line['method']}` | {line['first_ms']:,.1f} | {line['tenth_ms']:.1f} | {line['median_ms']:.1f} |"
                for line in baseline]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the preloaded servers alone, cascade, 3 requests")
    parser.add_argument("--preload", default="cascade,llmlingua2")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3, help="pairs of preloaded servers (one order each)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    RECORD.emit(header("startup", "test"))
    methods = ["cascade"] if args.quick else args.preload.split(",")
    n = 3 if args.quick else args.requests
    requests = one_per_article(build_requests(split_paragraphs("test"), 20 * n), n)
    preloaded_lines(["--preload", ",".join(methods)], methods, requests, 1 if args.quick else args.pairs)
    if not args.quick:
        baseline_lines(methods, requests)
        print(f"result record: {RECORD.write()}")


if __name__ == "__main__":
    main()
