"""Bounded loopback load test of `ctxcomp serve` (stops by itself).

    python bench/load.py [--quick] [--skip-threads] [--only PHASE]
    python bench/load.py --report bench/results/load-PHASE.json

Starts servers as subprocesses on free loopback ports (and a redis-server for the
fault phase), then prints one JSON object per phase:
  baseline   one client, sequential requests (the same mix), for the ratio
  steady     N concurrent clients, mixed sizes and options
  overload   many more clients with short deadlines: only RESOURCE_EXHAUSTED /
             DEADLINE_EXCEEDED beside OK, never INTERNAL
  memory     server RSS after warm-up, after load and settled
  faults     small requests (a third with return_kv into redis) while redis is
             killed and restarted, a stored blob is overwritten with garbage, and one
             8 MB request arrives: statuses, p99 of the small requests, seconds from
             redis's restart to the first stored blob, and every stored key
             re-read at the end (no corrupt blob may be served)
  p2         the same requests in this process (Compressor.compress_batch over as many
             requests as there are clients, the library's best) and through the server
             (N concurrent gRPC clients), at 1 and 16 clients, back to back: requests/s
             each way and their ratio (goal >= 0.9)
  http       the same requests over HTTP/JSON (--http-port, the gateway) and over gRPC on one
             server, at 1 and 16 clients, back to back: requests/s each way and their ratio
  threads    EXIT requests, quiet and beside a competing process (a 2-thread torch
             matmul loop, as another replica would be), for the start-up policy
             (threads = cores / workers, passive OpenMP waits) against OpenMP's
             default waits (CTXCOMP_OMP_PASSIVE=0) and against 1 thread
  fairness   one valid request must not hold the server hostage, nor one tenant learn
             about another (`--only fairness`):
             neighbour   15 clients of small requests, quiet and beside one HTML page of
                         10,000 paragraphs (~80k tokens): their p99 both ways, and the page's
                         outcome (done, or refused up front)
             tenants     with two tenants and a file KV store: tenant B's KV request times for
                         contexts tenant A already computed against contexts nobody sent, and
                         A's own repeats (a same-tenant hit)
             deep_html   pages nested 1,100 divs, 100k <b>, and unclosed tag soup
             echo        8 KB values in every field an error quotes, and 65 MB of metadata
             store_full  200 KV requests of distinct contexts into a file store with a cap:
                         the folder's largest size against the cap, and the statuses
  precision  ten starts of `--precision auto` (a fresh hub each): the form each encoder got

A full run (no --quick, no --only) writes its lines as a result record, bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
from common import Record, header, run_line

from ctxcomp.client import AsyncCtxcompClient, CtxcompClient
from ctxcomp.types import Document
from training import squad

# (method, options): the default method and LLMLingua-2 in its settings.
OPTION_MIX = [("", {}), ("llmlingua2", {}), ("llmlingua2", {"mode": "compat"}), ("llmlingua2", {"precision": "bf16"}),
              ("llmlingua2", {"query_weight": 1.0}), ("llmlingua2", {"force_reserve_digit": True})]
RECORD = Record("load")
COMPETITOR = "import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(*flags: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ctxcomp serve` on a free loopback port until the block ends."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "ctxcomp.cli", "serve", "--port", "0", "--port-file", str(port_file), *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
        )
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise SystemExit("server exited during start-up")
                time.sleep(0.2)
            yield server, f"127.0.0.1:{port_file.read_text()}"
        finally:
            server.terminate()
            server.wait(timeout=60)


class Redis:
    """A redis-server on a free loopback port that the fault phase kills and restarts."""

    def __init__(self, folder: str) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise SystemExit("the fault phase needs redis-server (apt-get install redis-server)")
        self.port, self.folder, self.proc = free_port(), folder, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--dir", self.folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def make_requests(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    paragraphs = squad.splits().test
    out = []
    for _ in range(count):
        docs = [p.context for p in rng.sample(paragraphs, rng.choice([1, 1, 3, 10]))]
        question = rng.choice(paragraphs).questions[0].text
        method, options = rng.choice(OPTION_MIX)
        out.append({"query": question, "documents": docs, "rate": rng.choice([0.2, 0.33, 0.5]),
                    "method": method, "options": options})
    return out


def percentile(latencies: list[float], q: float) -> float | None:
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None


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
    return {"clients": clients, "seconds": round(elapsed, 1), "ok_per_s": round(statuses["OK"] / elapsed, 2),
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "statuses": dict(statuses)}


def load_phases(clients: int, seconds: float, requests: list[dict]) -> None:
    with serving("--max-queue", "64") as (server, address):
        # Warm-up: every option path and request size once, then the concurrent mix briefly.
        asyncio.run(run_phase(address, 1, 8.0, 60.0, requests))
        asyncio.run(run_phase(address, clients, 8.0, 60.0, requests))
        rss = {"after_warmup": rss_mb(server.pid)}
        baseline = asyncio.run(run_phase(address, 1, seconds / 3, 60.0, requests))
        RECORD.emit({"phase": "baseline", **baseline})
        steady = asyncio.run(run_phase(address, clients, seconds, 60.0, requests))
        steady["throughput_ratio_vs_baseline"] = round(steady["ok_per_s"] / max(baseline["ok_per_s"], 1e-9), 2)
        RECORD.emit({"phase": "steady", **steady})
        rss["after_steady"] = rss_mb(server.pid)
        overload = asyncio.run(run_phase(address, clients * 6, seconds / 3, 1.0, requests))
        RECORD.emit({"phase": "overload", **overload})
        rss["after_overload"] = rss_mb(server.pid)
        asyncio.run(run_phase(address, 1, 2.0, 60.0, requests))  # load over: a few requests, then measure
        rss["settled"] = rss_mb(server.pid)
        RECORD.emit({"phase": "memory", **{k: round(v, 1) for k, v in rss.items()},
                          "rss_growth": round(rss["settled"] / rss["after_warmup"] - 1, 4)})


async def fault_traffic(address: str, redis: Redis, clients: int, seconds: float, requests: list[dict]) -> dict:
    """Small requests from `clients` clients for `seconds`, with the faults injected on a timeline."""
    import redis as redis_client

    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: list[float] = []
    keys: dict[str, dict] = {}  # every stored key a client was given -> the request that made it
    events: dict[str, float] = {}
    first_stored_after_restart: list[float] = []
    started = time.monotonic()
    stop_at = started + seconds

    async def worker(index: int) -> None:
        client = AsyncCtxcompClient(address, timeout=30)
        try:
            i = index
            while time.monotonic() < stop_at:
                req = requests[i % len(requests)]
                with_kv = i % 3 == 0
                i += clients
                begin = time.perf_counter()
                kind = "small_kv" if with_kv else "small"
                try:
                    result = await client.compress(req["query"], req["documents"][:3], method="llmlingua2", rate=0.33,
                                                   return_kv=with_kv)
                    statuses[kind]["OK"] += 1
                    latencies.append(time.perf_counter() - begin)
                    keys.update(dict.fromkeys(result.kv_keys, req))
                    if with_kv and "restarted" in events and not first_stored_after_restart:
                        first_stored_after_restart.append(time.monotonic() - started)
                except grpc.RpcError as error:
                    statuses[kind][error.code().name] += 1
                    await asyncio.sleep(0.05)
        finally:
            await client.close()

    async def faults() -> None:
        client = AsyncCtxcompClient(address, timeout=60)
        try:
            await asyncio.sleep(seconds * 0.2)
            redis.kill()
            events["killed"] = time.monotonic() - started
            await asyncio.sleep(seconds * 0.2)
            redis.start()
            events["restarted"] = time.monotonic() - started
            await asyncio.sleep(seconds * 0.2)
            stored = sorted(keys)
            if stored:  # what a stray SET or a bad disk leaves under a live key; then that context again
                redis_client.Redis.from_url(redis.url).set(f"ctxcomp:kv:{stored[0]}", b"garbage")
                events["corrupted"] = time.monotonic() - started
                req = keys[stored[0]]
                again = await client.compress(req["query"], req["documents"][:3], method="llmlingua2", rate=0.33, return_kv=True)
                served = redis_client.Redis.from_url(redis.url).get(f"ctxcomp:kv:{again.kv_keys[0]}")
                events["corrupt_key_served_again"] = time.monotonic() - started
                statuses["corrupted_context"]["OK" if again.kv_keys == (stored[0],) and intact(served) else "CORRUPT"] += 1
            try:
                await client.compress("q", ["x" * 1_000_000] * 8)  # 8 MB: refused up front by max_request_tokens
                statuses["8MB"]["OK"] += 1
            except grpc.RpcError as error:
                statuses["8MB"][error.code().name] += 1
            events["8MB_answered"] = time.monotonic() - started
        finally:
            await client.close()

    await asyncio.gather(faults(), *(worker(i) for i in range(clients)))
    return {"statuses": statuses, "latencies": latencies, "keys": keys, "events": events,
            "first_stored_after_restart": first_stored_after_restart}


def intact(data: bytes | None) -> bool:
    from ctxcomp.kv import blob

    try:
        blob.inspect(data or b"")
        return True
    except blob.BlobRefused:
        return False


def fault_phase(clients: int, seconds: float, requests: list[dict]) -> None:
    import redis as redis_client

    with tempfile.TemporaryDirectory() as folder:
        redis = Redis(folder)
        redis.start()
        try:
            with serving("--kv-store", redis.url, "--kv-store-timeout", "0.5") as (_, address):
                asyncio.run(run_phase(address, 1, 4.0, 60.0, requests))  # warm-up
                run = asyncio.run(fault_traffic(address, redis, clients, seconds, requests))
                store = redis_client.Redis.from_url(redis.url)
                # Every key a client was given: intact, or gone (redis restarted empty).
                found = [store.get(f"ctxcomp:kv:{key}") for key in run["keys"]]
                corrupt = sum(1 for data in found if data is not None and not intact(data))
        finally:
            redis.kill()
    restart = run["events"].get("restarted")
    recovery = round(run["first_stored_after_restart"][0] - restart, 2) if run["first_stored_after_restart"] else None
    internal = sum(c["INTERNAL"] for c in run["statuses"].values())
    RECORD.emit({"phase": "faults", "clients": clients, "seconds": seconds,
                      "statuses": {k: dict(v) for k, v in run["statuses"].items()},
                      "small_p50_ms": percentile(run["latencies"], 0.5), "small_p99_ms": percentile(run["latencies"], 0.99),
                      "events_s": {k: round(v, 2) for k, v in run["events"].items()},
                      "kv_recovery_s_after_redis_restart": recovery, "internal": internal,
                      "stored_keys_checked": len(run["keys"]), "corrupt_blobs_left": corrupt})


def in_process_rate(compressor, requests: list[dict], clients: int, seconds: float) -> tuple[float, float]:
    """(requests per second, CPU ms per request) of compress_batch over `clients` requests at a time, for `seconds`."""
    from ctxcomp.client import build_request
    from ctxcomp.wire import request_from_proto

    typed = [request_from_proto(build_request(r["query"], r["documents"], method=r["method"], rate=r["rate"],
                                              options=r["options"])) for r in requests]
    done, i, started, cpu = 0, 0, time.monotonic(), time.process_time()
    while time.monotonic() - started < seconds:
        batch = [typed[(i + k) % len(typed)] for k in range(clients)]
        i += clients
        done += len(compressor.compress_batch(batch))
    return done / (time.monotonic() - started), (time.process_time() - cpu) * 1000 / max(done, 1)


def batch_size_totals(metrics_port: int) -> tuple[float, float]:
    """(requests, micro-batches) the server has run so far, from its Prometheus batch-size histogram."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        lines = page.read().decode().splitlines()
    value = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("ctxcomp_batch_size_")}
    return value["ctxcomp_batch_size_sum"], value["ctxcomp_batch_size_count"]


def p2_phase(seconds: float, requests: list[dict]) -> None:
    """Throughput in-process against through the server, same requests, 1 and 16 clients;
    with where the CPU went: ms per request in-process, in the server, and in this process
    (the load generator's gRPC clients, which share the cores with the server), and the
    requests per encoder batch on each side (the server's from its metrics)."""
    from ctxcomp.hub import ModelHub
    from ctxcomp.pipeline import Compressor

    compressor = Compressor(ModelHub())
    in_process = {}
    for clients in (1, 16):
        in_process_rate(compressor, requests, clients, min(seconds, 8.0))  # warm-up: every option path once
        in_process[clients] = in_process_rate(compressor, requests, clients, seconds)
    chosen = {"in_process": {role: form for role, (form, _) in compressor.hub.precisions.items()}}
    del compressor
    metrics_port = free_port()
    with serving("--metrics-port", str(metrics_port)) as (server, address):
        for clients in (1, 16):
            asyncio.run(run_phase(address, clients, min(seconds, 8.0), 60.0, requests))  # warm-up
            if "server" not in chosen:  # every encoder the mix uses is loaded (and probed) by now
                with CtxcompClient(address, timeout=60) as client:
                    chosen["server"] = {m.role: m.precision for m in client.list_methods().models if m.precision}
                RECORD.emit({"phase": "p2", "encoder_precisions": chosen})
            server_cpu, generator_cpu = cpu_seconds(server.pid), time.process_time()
            batches_before = batch_size_totals(metrics_port)
            served = asyncio.run(run_phase(address, clients, seconds, 60.0, requests))
            batched, batches = (after - before for after, before in zip(batch_size_totals(metrics_port), batches_before))
            done = max(sum(served["statuses"].values()), 1)
            rate, cpu_ms = in_process[clients]
            RECORD.emit({
                "phase": "p2", "clients": clients, "in_process_per_s": round(rate, 2), "grpc_per_s": served["ok_per_s"],
                "grpc_vs_in_process": round(served["ok_per_s"] / rate, 3), "grpc_p50_ms": served["p50_ms"],
                "cpu_ms_per_request": {
                    "in_process": round(cpu_ms, 1),
                    "server": round((cpu_seconds(server.pid) - server_cpu) * 1000 / done, 1),
                    "load_generator": round((time.process_time() - generator_cpu) * 1000 / done, 1),
                },
                "requests_per_batch": {"in_process": clients, "server": round(batched / max(batches, 1), 2)},
                "statuses": served["statuses"],
            })


async def run_http_phase(base_url: str, clients: int, seconds: float, deadline: float, requests: list[dict]) -> dict:
    """run_phase's loop over HTTP/JSON (POST /v1/compress) with an aiohttp client per simulated user."""
    import aiohttp

    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=deadline)) as http_client:
            i = index
            while time.monotonic() < stop_at:
                req = requests[i % len(requests)]
                i += clients
                body = {"query": req["query"], "documents": [{"id": str(n), "text": t} for n, t in enumerate(req["documents"])],
                        "method": req["method"], "rate": req["rate"], "options": req["options"]}
                start = time.perf_counter()
                async with http_client.post(f"{base_url}/v1/compress", json=body) as response:
                    answer = await response.json()
                if response.status == 200:
                    statuses["OK"] += 1
                    latencies.append(time.perf_counter() - start)
                else:
                    statuses[answer["error"]["status"]] += 1
                    if response.status == 429:
                        await asyncio.sleep(0.05)

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "ok_per_s": round(statuses["OK"] / elapsed, 2),
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "statuses": dict(statuses)}


def http_phase(seconds: float, requests: list[dict]) -> None:
    """HTTP/JSON against gRPC on one server (--http-port), the same requests, 1 and 16 clients,
    back to back: requests/s each way and their ratio, and the median latencies."""
    http_port = free_port()
    with serving("--http-port", str(http_port)) as (_, address):
        base_url = f"http://127.0.0.1:{http_port}"
        for clients in (1, 16):
            asyncio.run(run_phase(address, clients, min(seconds, 8.0), 60.0, requests))  # warm-up, both doors
            asyncio.run(run_http_phase(base_url, clients, min(seconds, 8.0), 60.0, requests))
            over_grpc = asyncio.run(run_phase(address, clients, seconds, 60.0, requests))
            over_http = asyncio.run(run_http_phase(base_url, clients, seconds, 60.0, requests))
            RECORD.emit({
                "phase": "http", "clients": clients, "grpc_per_s": over_grpc["ok_per_s"], "http_per_s": over_http["ok_per_s"],
                "http_vs_grpc": round(over_http["ok_per_s"] / max(over_grpc["ok_per_s"], 1e-9), 3),
                "grpc_p50_ms": over_grpc["p50_ms"], "http_p50_ms": over_http["p50_ms"],
                "statuses": {"grpc": over_grpc["statuses"], "http": over_http["statuses"]},
            })


def threads_phase(seconds: float, requests: list[dict]) -> None:
    """EXIT throughput, quiet and beside a competitor, per CPU policy (one client: model time)."""
    exit_requests = [dict(r, method="exit", options={}) for r in requests]
    policies = {"auto (cores/workers, passive waits)": ([], {}),
                "auto threads, OpenMP default waits": ([], {"CTXCOMP_OMP_PASSIVE": "0"}),
                "1 thread, passive waits": (["--threads", "1"], {})}
    for name, (flags, env) in policies.items():
        with serving(*flags, env=env) as (_, address):
            asyncio.run(run_phase(address, 2, 4.0, 60.0, exit_requests))  # warm-up
            quiet = asyncio.run(run_phase(address, 2, seconds, 60.0, exit_requests))
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR],  # OpenMP's default waits: a plain process
                                          env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
            try:
                time.sleep(1.0)
                busy = asyncio.run(run_phase(address, 2, seconds, 60.0, exit_requests))
            finally:
                competitor.kill()
                competitor.wait()
        RECORD.emit({"phase": "threads", "policy": name, "quiet_ok_per_s": quiet["ok_per_s"],
                          "quiet_p50_ms": quiet["p50_ms"], "competing_ok_per_s": busy["ok_per_s"],
                          "competing_p50_ms": busy["p50_ms"], "cpus": os.cpu_count()})


# --- fairness: one request must not hold the server hostage, nor one tenant learn about another ---

PAGE_QUERY = "Which entry is number 4242?"


def html_page(paragraphs: int = 10_000) -> str:
    """A valid page of many short paragraphs (~80k tokens at 10,000): the heavy neighbour."""
    words = ("harbour", "ledger", "copper", "meadow", "signal", "lantern", "orchard", "quarry")
    body = "".join(f"<p>{words[i % 8]} {i}</p>" for i in range(paragraphs))
    return f"<html><body><h1>Inventory</h1>{body}</body></html>"


async def neighbour_traffic(address: str, clients: int, seconds: float, small: list[dict], page: str) -> dict:
    quiet = await run_phase(address, clients, seconds, 30.0, small)
    outcome: dict = {}

    async def send_page() -> None:
        client = AsyncCtxcompClient(address, timeout=900)
        started = time.perf_counter()
        try:
            result = await client.compress(PAGE_QUERY, [Document("page", page, {}, "html")], rate=0.2)
            outcome.update(status="OK", tokens_before=result.tokens_before, tokens_after=result.tokens_after)
        except grpc.RpcError as error:
            outcome.update(status=error.code().name, message=error.details()[:300])
        finally:
            outcome["seconds"] = round(time.perf_counter() - started, 1)
            await client.close()

    page_task = asyncio.ensure_future(send_page())
    await asyncio.sleep(1.0)  # the page is planned and running
    busy = await run_phase(address, clients, seconds, 30.0, small)
    outcome["in_flight_all_phase"] = not page_task.done()
    await page_task
    ratio = busy["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] and busy["p99_ms"] else None
    return {"quiet": quiet, "beside_page": busy, "p99_ratio": round(ratio, 2) if ratio else None, "page": outcome}


def neighbour_phase(clients: int, seconds: float, requests: list[dict]) -> None:
    small = [r for r in requests if r["method"] == "" and len(r["documents"]) <= 3]
    with serving() as (server, address):
        asyncio.run(run_phase(address, clients, 6.0, 30.0, small))  # warm-up
        line = asyncio.run(neighbour_traffic(address, clients, seconds, small, html_page()))
    RECORD.emit({"phase": "fairness", "part": "neighbour", "clients": clients, "goal": "p99 ratio < 3", **line})


def kv_seconds(client: CtxcompClient, context: str) -> tuple[float, float]:
    started = time.perf_counter()
    result = client.compress("What is this about?", [context], method="cascade", rate=0.5, return_kv=True, kv_codec="int8")
    return time.perf_counter() - started, result.timings_ms.get("kv", 0.0)


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    quartile = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)  # noqa: E731
    return {"n": len(values), "p25_ms": quartile(0.25), "median_ms": quartile(0.5), "p75_ms": quartile(0.75)}


def tenants_phase(count: int) -> None:
    """Tenant B's KV requests for contexts tenant A computed, and for contexts nobody sent.
    The two sets are matched in length (neighbours by length, one to each set at random), so
    any difference in B's times would come from A's requests, not from the contexts."""
    by_length = sorted((p.context for p in squad.splits().test), key=len)[:: 7][: 2 * count + 1]
    rng = random.Random(11)
    computed, fresh_contexts = [], []
    for pair in zip(by_length[0:-1:2], by_length[1:-1:2]):
        first, second = rng.sample(pair, 2)
        computed.append(first)
        fresh_contexts.append(second)
    contexts = computed + fresh_contexts + [by_length[-1]]
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text("acme tok-a\nglobex tok-b\n")
        with serving("--kv-store", f"file://{tmp}/kv", "--auth-tokens-file", str(tokens)) as (server, address):
            with CtxcompClient(address, token="tok-a", timeout=300) as a, CtxcompClient(address, token="tok-b", timeout=300) as b:
                kv_seconds(b, contexts[-1])  # warm-up: the LLM loads
                kv_seconds(b, contexts[-1])
                for context in contexts[:count]:
                    kv_seconds(a, context)  # tenant A computes these
                after_a, fresh, repeat = [], [], []
                for i in range(count):  # tenant B, interleaved: contexts A sent, contexts nobody sent
                    after_a.append(kv_seconds(b, contexts[i]))
                    fresh.append(kv_seconds(b, contexts[count + i]))
                    repeat.append(kv_seconds(a, contexts[i]))
    line = {"phase": "fairness", "part": "tenants", "contexts": count}
    for name, times in (("b_after_a", after_a), ("b_fresh", fresh), ("a_repeat", repeat)):
        line[name] = {"wall": spread([t for t, _ in times]), "kv_stage": spread([k / 1000 for _, k in times])}
    wall_a, wall_f = line["b_after_a"]["wall"], line["b_fresh"]["wall"]
    line["indistinguishable"] = (wall_f["p25_ms"] <= wall_a["median_ms"] <= wall_f["p75_ms"]
                                 and wall_a["p25_ms"] <= wall_f["median_ms"] <= wall_a["p75_ms"])
    RECORD.emit(line)


def deep_html_phase() -> None:
    pages = {"divs_1100": "<div>" * 1100 + "The tower opened in 1889.",
             "bold_20k": "<b>" * 20_000 + "The tower opened in 1889.",
             "bold_100k": "<b>" * 100_000 + "The tower opened in 1889.",
             "tag_soup": "<html><body>" + "<p>soup <b>bold <i>italic " * 3000 + "The tower opened in 1889."}
    line = {"phase": "fairness", "part": "deep_html"}
    with serving() as (server, address), CtxcompClient(address, timeout=300) as client:
        for name, page in pages.items():
            try:
                client.compress("When did the tower open?", [Document("p", page, {}, "html")], rate=0.5)
                line[name] = {"status": "OK"}
            except grpc.RpcError as error:
                line[name] = {"status": error.code().name, "message": error.details()[:160]}
    RECORD.emit(line)


def echo_phase() -> None:
    long = "x" * 8192
    fields = {"method": dict(method=long), "order": dict(order=long),
              "history_mode": dict(messages=[("user", "When?")], history_mode=long),
              "role": dict(messages=[(long, "hi")]), "option": dict(options={long: 1})}
    line = {"phase": "fairness", "part": "echo"}
    with serving() as (server, address), CtxcompClient(address, timeout=300, max_message_bytes=200 << 20) as client:
        for name, extra in fields.items():
            line[name] = outcome(lambda: client.compress("When?", ["The tower opened in 1889."], rate=0.5, **extra))
        twice = [Document(long, "The tower opened in 1889."), Document(long, "It is in Paris.")]
        line["id"] = outcome(lambda: client.compress("When?", twice, rate=0.5))
        bloated = Document("a", "The tower opened in 1889.", {f"k{i:07d}": "v" * 640 for i in range(100_000)})
        line["metadata_65mb"] = outcome(lambda: client.compress("When?", [bloated], rate=0.5))
    RECORD.emit(line)


def outcome(call) -> dict:
    try:
        call()
        return {"status": "OK"}
    except grpc.RpcError as error:
        return {"status": error.code().name, "message_chars": len(error.details() or ""),
                "field": (error.details() or "").split(":", 1)[0][:40]}


def store_full_phase(requests: int, cap_mb: int) -> None:
    contexts = [p.context for p in squad.splits().test][:requests]
    statuses: collections.Counter = collections.Counter()
    largest = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "kv"
        flags = ("--kv-store", f"file://{folder}", "--kv-store-max-bytes", str(cap_mb << 20))
        with serving(*flags) as (server, address), CtxcompClient(address, timeout=300) as client:
            for context in contexts:
                try:
                    client.compress("What is this about?", [context], method="cascade", rate=0.5, return_kv=True, kv_codec="int8")
                    statuses["OK"] += 1
                except grpc.RpcError as error:
                    statuses[error.code().name] += 1
                largest = max(largest, sum(p.stat().st_size for p in folder.glob("*/*.kvblob")))
    RECORD.emit({"phase": "fairness", "part": "store_full", "requests": len(contexts), "cap_mb": cap_mb,
                 "largest_mb": round(largest / (1 << 20), 1), "statuses": dict(statuses)})


def fairness_phases(quick: bool, clients: int, seconds: float, requests: list[dict]) -> None:
    neighbour_phase(4 if quick else clients, 10.0 if quick else seconds, requests)
    tenants_phase(4 if quick else 24)
    deep_html_phase()
    echo_phase()
    store_full_phase(20 if quick else 200, 5 if quick else 50)


def precision_phase(starts: int) -> None:
    from ctxcomp.hub import ModelHub

    picks = []
    for _ in range(starts):
        hub = ModelHub(precision="auto")
        picks.append({role: (hub.precision_of(role), hub.precisions[role][1]) for role in ("token_classifier", "relevance")})
    RECORD.emit({"phase": "precision", "starts": starts,
                 "chosen": {role: collections.Counter(p[role][0] for p in picks) for role in picks[0]},
                 "probe_ms": [{role: p[role][1] for role in p} for p in picks]})


# --- the docs' tables, from a result record ---

def statuses_text(statuses: dict) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(statuses.items(), key=lambda kv: -kv[1]))


def load_report(lines: list[dict]) -> list[str]:
    phases = {line["phase"]: line for line in lines}
    out = ["| phase | clients | OK/s | p50 ms | p99 ms | statuses |", "|---|---|---|---|---|---|"]
    for name in ("baseline", "steady", "overload"):
        if name in phases:
            p = phases[name]
            out.append(f"| {name} | {p['clients']} | {p['ok_per_s']} | {p['p50_ms']} | {p['p99_ms']} | {statuses_text(p['statuses'])} |")
    if "steady" in phases:
        out += ["", f"Steady against baseline: {phases['steady']['throughput_ratio_vs_baseline']}x the requests per second."]
    if "memory" in phases:
        m = phases["memory"]
        out += ["", f"Server RSS: {m['after_warmup']:,} MB after warm-up, {m['after_steady']:,} MB after the steady phase, "
                f"{m['after_overload']:,} MB after overload, {m['settled']:,} MB settled ({100 * m['rss_growth']:+.1f}%)."]
    return out


def faults_report(line: dict) -> list[str]:
    names = {"small": "small, no KV", "small_kv": "small with `return_kv`", "corrupted_context": "the corrupted blob's context again",
             "8MB": "the 8 MB request"}
    out = [f"{line['clients']} clients for {line['seconds']:.0f} s; events at (s): "
           + ", ".join(f"{name} {at}" for name, at in line["events_s"].items()) + ".", "",
           "| requests | statuses |", "|---|---|"]
    out += [f"| {names.get(kind, kind)} | {statuses_text(statuses)} |" for kind, statuses in line["statuses"].items()]
    out += ["", f"INTERNAL: {line['internal']}. Small requests p50 {line['small_p50_ms']} ms, p99 {line['small_p99_ms']} ms. "
            f"First stored blob {line['kv_recovery_s_after_redis_restart']} s after redis restarted. "
            f"Stored keys re-read at the end: {line['stored_keys_checked']}, corrupt: {line['corrupt_blobs_left']}."]
    return out


def p2_report(lines: list[dict]) -> list[str]:
    rows = [line for line in lines if "clients" in line]
    out = ["| clients | in-process req/s | gRPC req/s | gRPC / in-process | gRPC p50 ms | CPU ms per request: in-process / "
           "server / load generator | requests per batch: in-process / server |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu, batch = r["cpu_ms_per_request"], r["requests_per_batch"]
        out.append(f"| {r['clients']} | {r['in_process_per_s']} | {r['grpc_per_s']} | **{r['grpc_vs_in_process']}** | "
                   f"{r['grpc_p50_ms']} | {cpu['in_process']} / {cpu['server']} / {cpu['load_generator']} | "
                   f"{batch['in_process']} / {batch['server']} |")
    return out


def http_report(lines: list[dict]) -> list[str]:
    out = ["| clients | gRPC req/s | HTTP req/s | HTTP / gRPC | p50 ms gRPC / HTTP | statuses gRPC / HTTP |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r['clients']} | {r['grpc_per_s']} | {r['http_per_s']} | **{r['http_vs_grpc']}** | {r['grpc_p50_ms']} / "
            f"{r['http_p50_ms']} | {statuses_text(r['statuses']['grpc'])} / {statuses_text(r['statuses']['http'])} |"
            for r in lines]
    return out


def threads_report(lines: list[dict]) -> list[str]:
    out = ["| policy | quiet OK/s | p50 ms | beside a competing process OK/s | p50 ms |", "|---|---|---|---|---|"]
    out += [f"| {r['policy']} | {r['quiet_ok_per_s']} | {r['quiet_p50_ms']} | {r['competing_ok_per_s']} | {r['competing_p50_ms']} |"
            for r in lines]
    return out


def fairness_report(lines: list[dict]) -> list[str]:
    parts = {line["part"]: line for line in lines}
    out = ["| case | result |", "|---|---|"]
    if "neighbour" in parts:
        n = parts["neighbour"]
        page = n["page"]
        out.append(f"| {n['clients']} clients of small requests, {n['quiet']['seconds']:.0f} s quiet, then "
                   f"{n['beside_page']['seconds']:.0f} s beside one HTML page of {page['tokens_before']:,} tokens "
                   f"({'in flight the whole phase' if page['in_flight_all_phase'] else 'done before the phase ended'}) | p99 {n['quiet']['p99_ms']} ms quiet, "
                   f"{n['beside_page']['p99_ms']} ms beside the page (**{n['p99_ratio']}x**, goal: {n['goal']}); "
                   f"the page {page['status']} in {page['seconds']} s |")
    if "tenants" in parts:
        t = parts["tenants"]
        def wall(key: str) -> str:
            w = t[key]["wall"]
            return f"{w['median_ms']} ms [IQR {w['p25_ms']}-{w['p75_ms']}]"
        out.append(f"| tenant B's KV requests: {t['contexts']} contexts tenant A had computed, against {t['contexts']} "
                   f"nobody had sent | median {wall('b_after_a')} against {wall('b_fresh')}: "
                   f"{'indistinguishable' if t['indistinguishable'] else '**distinguishable**'}; A's own repeats "
                   f"(store hits) {t['a_repeat']['wall']['median_ms']} ms |")
    if "deep_html" in parts:
        d = parts["deep_html"]
        cases = {"divs_1100": "1,100 nested divs", "bold_20k": "20,000 nested `<b>`", "bold_100k": "100,000 nested `<b>`",
                 "tag_soup": "unclosed tag soup"}
        out.append("| pages: " + " / ".join(cases[k] for k in cases if k in d) + " | "
                   + " / ".join(d[k]["status"] + (f" (`{d[k]['message']}`)" if "message" in d[k] else "")
                                for k in cases if k in d) + " |")
    if "echo" in parts:
        e = {k: v for k, v in parts["echo"].items() if isinstance(v, dict)}
        chars = [v["message_chars"] for v in e.values()]
        out.append(f"| 8 KB values in {', '.join(k for k in e if k != 'metadata_65mb')}; 65 MB of metadata | "
                   + ", ".join(sorted({v['status'] for v in e.values()})) + " naming "
                   + ", ".join(f"`{v['field'][:24]}`" for v in e.values()) + f"; messages of {min(chars)}-{max(chars)} characters |")
    if "store_full" in parts:
        f = parts["store_full"]
        out.append(f"| {f['requests']} KV requests of distinct contexts into a file store capped at {f['cap_mb']} MB | "
                   f"{statuses_text(f['statuses'])}; the folder's largest: {f['largest_mb']} MB |")
    return out


def precision_report(lines: list[dict]) -> list[str]:
    out = []
    for line in lines:
        chosen = "; ".join(f"{role}: " + ", ".join(f"{form} {n} times" for form, n in forms.items())
                           for role, forms in line["chosen"].items())
        probe = {role: {form: statistics.median(p[role][form] for p in line["probe_ms"]) for form in line["probe_ms"][0][role]}
                 for role in line["probe_ms"][0]}
        out += [f"{line['starts']} starts with `--precision auto`, a fresh hub each: {chosen}.", "",
                "| encoder | " + " | ".join(next(iter(probe.values()))) + " |", "|---" * (1 + len(next(iter(probe.values())))) + "|"]
        out += [f"| {role} | " + " | ".join(f"{ms:.0f} ms" for ms in forms.values()) + " |" for role, forms in probe.items()]
        out += ["", "(median probe time per form over the starts)"]
    return out


SECTIONS = (  # the phases each table shows, and what renders them
    (("baseline", "steady", "overload", "memory"), load_report),
    (("faults",), lambda lines: faults_report(lines[0])),
    (("p2",), p2_report),
    (("http",), http_report),
    (("threads",), threads_report),
    (("fairness",), fairness_report),
    (("precision",), precision_report),
)


def report(path: Path) -> str:
    """A result record of this bench as the docs show it: one table per phase it holds."""
    record = json.loads(path.read_text())
    lines = [line for line in record["lines"][1:] if "phase" in line]
    out = [f"{run_line(record)}.", ""]
    for phases, render in SECTIONS:
        shown = [line for line in lines if line["phase"] in phases]
        if shown:
            out += render(shown) + [""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases, faults only (under a minute)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip-threads", action="store_true", help="leave out the threads phase")
    parser.add_argument("--only", choices=["load", "faults", "p2", "http", "threads", "fairness", "precision"],
                        help="run this phase alone")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    RECORD.emit(header("load", "test", requests_from="the test articles' paragraphs; only timings and statuses are reported"))
    requests = make_requests(400, seed=5)
    if args.quick:
        fault_phase(4, 15.0, requests)
        return
    phases = {
        "load": lambda: load_phases(args.clients, args.seconds, requests),
        "faults": lambda: fault_phase(8, args.seconds / 2, requests),
        "p2": lambda: p2_phase(args.seconds / 4, requests),
        "http": lambda: http_phase(args.seconds / 4, requests),
        "threads": lambda: threads_phase(args.seconds / 4, requests),
        "fairness": lambda: fairness_phases(False, 15, args.seconds / 2, requests),
        "precision": lambda: precision_phase(10),
    }
    for name, run in phases.items():
        if args.only in (None, name) and not (name == "threads" and args.skip_threads and args.only is None):
            run()
    print(json.dumps({"record": str(RECORD.write(f"load-{args.only}" if args.only else "load"))}), flush=True)


if __name__ == "__main__":
    main()
