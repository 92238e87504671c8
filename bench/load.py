"""Bounded loopback load test of `ctxcomp serve` (stops by itself).

    python bench/load.py [--quick]

Starts the server as a subprocess on a free loopback port, then:
  baseline   one client, sequential requests (the same mix), for the ratio
  steady     N concurrent clients for D seconds, mixed sizes and options
  overload   many more clients with short deadlines, to see only
             RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED (never INTERNAL)
Prints one JSON object per phase: requests/s, p50/p99 latency, status counts,
server RSS at start (after warm-up) and end, and the steady/baseline ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from ctxcomp.client import AsyncCtxcompClient
from ctxcomp.models.training import squad

# (method, options): the default method and LLMLingua-2 in its settings.
OPTION_MIX = [("", {}), ("llmlingua2", {}), ("llmlingua2", {"mode": "compat"}), ("llmlingua2", {"precision": "bf16"}),
              ("llmlingua2", {"query_weight": 1.0}), ("llmlingua2", {"force_reserve_digit": True})]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_requests(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    paragraphs = squad.split_articles(squad.load_paragraphs())[1]
    out = []
    for _ in range(count):
        docs = [p.context for p in rng.sample(paragraphs, rng.choice([1, 1, 3, 10]))]
        question = rng.choice(paragraphs).questions[0].text
        method, options = rng.choice(OPTION_MIX)
        out.append({"query": question, "documents": docs, "rate": rng.choice([0.2, 0.33, 0.5]),
                    "method": method, "options": options})
    return out


async def run_phase(address: str, clients: int, seconds: float, deadline: float, requests: list[dict]) -> dict:
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        client = AsyncCtxcompClient(address, timeout=deadline)
        try:
            i = index
            while time.monotonic() < stop_at:
                req = requests[i % len(requests)]
                i += clients
                start = time.perf_counter()
                try:
                    await client.compress(req["query"], req["documents"], method=req["method"], rate=req["rate"], options=req["options"])
                    statuses["OK"] += 1
                    latencies.append(time.perf_counter() - start)
                except grpc.RpcError as error:
                    statuses[error.code().name] += 1
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await asyncio.sleep(0.05)  # a well-behaved client backs off when told the server is busy
        finally:
            await client.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else None  # noqa: E731
    return {"clients": clients, "seconds": round(elapsed, 1), "ok_per_s": round(statuses["OK"] / elapsed, 2),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 clients, short phases (under a minute)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    clients, seconds = (8, 10.0) if args.quick else (args.clients, args.seconds)
    requests = make_requests(400, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, "-m", "ctxcomp.cli", "serve", "--port", "0", "--port-file",
                                   str(port_file), "--max-queue", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise SystemExit("server exited during start-up")
                time.sleep(0.2)
            address = f"127.0.0.1:{port_file.read_text()}"
            # Warm-up: every option path and request size once, then the concurrent mix briefly.
            asyncio.run(run_phase(address, 1, 8.0, 60.0, requests))
            asyncio.run(run_phase(address, clients, 8.0, 60.0, requests))
            rss = {"after_warmup": rss_mb(server.pid)}
            baseline = asyncio.run(run_phase(address, 1, seconds / 3, 60.0, requests))
            print(json.dumps({"phase": "baseline", **baseline}), flush=True)
            steady = asyncio.run(run_phase(address, clients, seconds, 60.0, requests))
            steady["throughput_ratio_vs_baseline"] = round(steady["ok_per_s"] / max(baseline["ok_per_s"], 1e-9), 2)
            print(json.dumps({"phase": "steady", **steady}), flush=True)
            rss["after_steady"] = rss_mb(server.pid)
            overload = asyncio.run(run_phase(address, clients * 6, seconds / 3, 1.0, requests))
            print(json.dumps({"phase": "overload", **overload}), flush=True)
            rss["after_overload"] = rss_mb(server.pid)
            asyncio.run(run_phase(address, 1, 2.0, 60.0, requests))  # load over: a few requests, then measure
            rss["settled"] = rss_mb(server.pid)
            print(json.dumps({"phase": "memory", **{k: round(v, 1) for k, v in rss.items()},
                              "rss_growth": round(rss["settled"] / rss["after_warmup"] - 1, 4)}), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
