"""Batch runners: read the corpus in record batches, skip finished ids, compress, write parts.

Output folder layout:
    _job.json              settings and their hash; a restart must match them
    part-00000.parquet     written whole under a temporary name, then renamed,
    part-00001.parquet     so a killed run leaves only complete parts behind
    embeddings.faiss       (with --embeddings) inner-product index over all rows,
    embeddings_ids.json    and the record id of each index row

Resuming: the ids in existing parts are done; a restart with the same
arguments compresses only the rest and never writes an id twice (duplicate
ids inside the input are written once, too).

Ctrl-C (SIGINT) stops the run at the next model checkpoint: the batch in flight is dropped
(never half-written), `run` raises Interrupted with the figures so far, and a rerun resumes.
A second Ctrl-C exits at once (status 130); the parts written are whole either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from ctxcomp.batch.job import CompressBatch, JobConfig
from ctxcomp.cancellation import Cancelled, cancellable
from ctxcomp.errors import InvalidRequest
from ctxcomp.threads import ThreadPlan, plan_threads
from ctxcomp.threads import apply as apply_threads

MANIFEST = "_job.json"


def read_batches(path: Path, batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Column dicts of at most batch_size records; memory stays bounded by one batch."""
    if path.suffix == ".parquet":
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield record_batch.to_pydict()
        return
    columns: dict[str, list[Any]] = {"id": [], "text": [], "query": [], "format": []}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "id" not in record or "text" not in record:
                raise InvalidRequest(f"{path.name}:{line_no}", "each record needs 'id' and 'text'")
            for name in columns:
                columns[name].append(record.get(name))
            if len(columns["id"]) == batch_size:
                yield columns
                columns = {name: [] for name in columns}
    if columns["id"]:
        yield columns


def count_records(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


class OutputFolder:
    def __init__(self, root: Path, config: JobConfig, input_path: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".part-*.tmp"):
            stale.unlink()  # left by a killed run: never renamed, so never counted
        manifest = {"config_hash": config.config_hash(), "config": asdict(config), "input": str(input_path)}
        existing = root / MANIFEST
        if existing.exists():
            previous = json.loads(existing.read_text())
            if previous["config_hash"] != manifest["config_hash"]:
                raise InvalidRequest(
                    "output", f"{root} holds a run with other settings (config hash {previous['config_hash']}); "
                    "resume with the same arguments or use a new folder"
                )
        else:
            existing.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        self.parts = sorted(root.glob("part-*.parquet"))
        self.done: set[str] = set()
        for part in self.parts:
            self.done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())

    def write(self, table: pa.Table) -> int:
        """Write one part atomically (rows whose id is done or repeated dropped first) and
        mark its ids done. Returns the rows written."""
        first = []
        for i, record_id in enumerate(table.column("id").to_pylist()):
            if record_id not in self.done:
                first.append(i)
                self.done.add(record_id)
        table = table.take(pa.array(first, pa.int64()))
        if table.num_rows == 0:
            return 0
        index = int(self.parts[-1].stem.split("-")[1]) + 1 if self.parts else 0
        final = self.root / f"part-{index:05d}.parquet"
        staging = self.root / f".part-{index:05d}.tmp"
        pq.write_table(table, staging)
        os.replace(staging, final)
        self.parts.append(final)
        return table.num_rows

    def pending(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The records of a batch not written yet (first occurrence of each id)."""
        seen: set[str] = set()
        keep = []
        for i, record_id in enumerate(batch["id"]):
            record_id = str(record_id)
            if record_id not in self.done and record_id not in seen:
                keep.append(i)
                seen.add(record_id)
        return {name: [values[i] for i in keep] for name, values in batch.items()}

    def build_index(self) -> int:
        """Inner-product faiss index over every row's embedding; returns its size."""
        import faiss
        import numpy as np

        ids, vectors = [], []
        for part in sorted(self.root.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["id", "embedding"])
            for record_id, vector in zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()):
                if vector is not None:
                    ids.append(record_id)
                    vectors.append(vector)
        if not vectors:
            return 0
        matrix = np.asarray(vectors, dtype=np.float32)
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        faiss.write_index(index, str(self.root / "embeddings.faiss"))
        (self.root / "embeddings_ids.json").write_text(json.dumps(ids))
        return len(ids)


class Interrupted(Exception):
    """Ctrl-C stopped the run; `figures` are run()'s figures up to the last part written."""

    def __init__(self, figures: dict[str, Any]) -> None:
        super().__init__(f"interrupted after {figures['written']} records written")
        self.figures = figures


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """While inside (on the main thread), the first SIGINT sets `stop` and the second exits
    at once with status 130; elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()
        print("\nctxcomp batch: stopping (Ctrl-C again to quit at once; a rerun resumes)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Progress:
    """The records-written bar and rate, started once the models are loaded (`start`), so
    that neither the ETA nor records_per_s counts loading."""

    def __init__(self, total: int, already: int, shown: bool) -> None:
        self.total, self.already, self.shown = total, already, shown
        self.bar: Any = None
        self.started: float | None = None
        self.written = 0

    def start(self) -> None:
        if self.started is None:
            from tqdm import tqdm

            self.started = time.perf_counter()
            self.bar = tqdm(total=self.total, initial=min(self.already, self.total), unit="rec", file=sys.stderr,
                            disable=not self.shown, dynamic_ncols=True)

    def update(self, count: int) -> None:
        self.start()
        self.written += count
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started if self.started is not None else 0.0
        return round(self.written / elapsed, 2) if elapsed > 0 else 0.0


def run(
    input_path: Path,
    output: Path,
    config: JobConfig,
    *,
    engine: Literal["local", "ray"] = "local",
    batch_size: int = 64,
    workers: int = 2,
    threads: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Compress every record of input_path not yet in output; returns run figures
    (records_per_s counts from the moment the models are loaded). Raises Interrupted on Ctrl-C.

    threads: torch intra-op threads per worker; 0 splits this process's cores between the
    workers (one local worker, or `workers` Ray actors). Said on stderr at the start."""
    if batch_size < 1:
        raise InvalidRequest("batch_size", f"must be positive, got {batch_size}")
    folder = OutputFolder(output, config, input_path)
    total = count_records(input_path)
    already = len(folder.done)
    bar = Progress(total, already, progress)
    started = time.perf_counter()
    thread_plan = plan_threads(1 if engine == "local" else workers, threads)
    print(f"ctxcomp batch: {thread_plan.describe()}", file=sys.stderr, flush=True)
    stop = threading.Event()
    with stop_on_interrupt(stop), cancellable(stop.is_set):
        tables = (
            _run_local(input_path, folder, config, batch_size, thread_plan, bar.start)
            if engine == "local"
            else _run_ray(input_path, folder, config, batch_size, workers, thread_plan)
        )
        try:
            for table in tables:
                bar.update(folder.write(table))
                if stop.is_set():
                    break
        except Cancelled:
            pass
    bar.close()
    indexed = folder.build_index() if config.embeddings and not stop.is_set() else 0
    figures = {"engine": engine, "records": total, "skipped_done": already, "written": bar.written,
               "seconds": round(time.perf_counter() - started, 2), "records_per_s": bar.rate(), "indexed": indexed}
    if stop.is_set():
        raise Interrupted(figures)
    return figures


def _run_local(
    input_path: Path, folder: OutputFolder, config: JobConfig, batch_size: int, thread_plan: ThreadPlan,
    loaded: Callable[[], None],
) -> Iterator[pa.Table]:
    apply_threads(thread_plan)
    worker: CompressBatch | None = None
    for batch in read_batches(input_path, batch_size):
        todo = folder.pending(batch)
        if not todo["id"]:
            continue
        if worker is None:  # models load only when there is work
            worker = CompressBatch(config)
            worker.compressor.warm_up([config.method or worker.compressor.default_method])
            loaded()
        yield worker(todo)


def start_ray(workers: int, thread_plan: ThreadPlan, attempts: int = 2) -> None:
    """ray.init for the job: one CPU per actor plus one for reading; a local instance unless
    RAY_ADDRESS says otherwise. A local raylet that does not register within Ray's 30 s (seen
    on a loaded 2-core machine) is shut down and started once more."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(
                num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(thread_plan.threads), "OMP_WAIT_POLICY": "PASSIVE"}},
            )
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for a startup timeout
            ray.shutdown()
            if attempt + 1 == attempts or "timed out during startup" not in str(err):
                raise
            logging.getLogger("ctxcomp.batch").warning("Ray did not start (%s); trying once more", err)


def _run_ray(
    input_path: Path, folder: OutputFolder, config: JobConfig, batch_size: int, workers: int, thread_plan: ThreadPlan
) -> Iterator[pa.Table]:
    """Ray Data: the same CompressBatch as an actor pool of `workers`, results streamed back
    to this process, which writes the parts (one writer keeps the parts atomic)."""
    import ray

    if not ray.is_initialized():
        start_ray(workers, thread_plan)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts written records
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    reader = ray.data.read_parquet if input_path.suffix == ".parquet" else ray.data.read_json
    dataset = reader(str(input_path))
    done = frozenset(folder.done)
    if done:
        dataset = dataset.filter(lambda row: str(row["id"]) not in done)
    compressed = dataset.map_batches(
        CompressBatch,
        fn_constructor_kwargs={"config": config},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=1,
    )
    yield from compressed.iter_batches(batch_format="pyarrow", batch_size=None)
