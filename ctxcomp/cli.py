"""Command line: `ctxcomp serve`, `ctxcomp compress`, `ctxcomp models`, `ctxcomp demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TextIO

try:
    from ctxcomp import methods, models, settings, wire
    from ctxcomp.method import describe_options
except ModuleNotFoundError as missing:  # the default install is the client library alone
    raise SystemExit(f"ctxcomp: the command needs the server's packages ({missing.name} is not installed): "
                     "pip install 'ctxcomp[server]'") from None
from ctxcomp.errors import CtxcompError, InvalidRequest
from ctxcomp.types import CompressRequest, CompressResult, Document, field_default, request_fields

if TYPE_CHECKING:
    from ctxcomp.kv.stage import KvTarget
    from ctxcomp.service.server import Server
    from ctxcomp.service.tenants import Tenants

DEMO_RATE = 0.4  # `make demo` keeps 40% of the sample's tokens


def read_jsonl(lines: Iterable[str], query: str | None) -> tuple[str, tuple[Document, ...]]:
    """Documents from JSONL: {"id", "text", "metadata"?, "format"?} per line, or a bare JSON string.

    A line {"query": ...} (without "text") sets the query unless --query was given.
    """
    documents: list[Document] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"input line {number}: not JSON ({err.msg})") from err
        if isinstance(item, str):
            documents.append(Document(str(len(documents)), item))
        elif isinstance(item, dict) and "text" in item:
            doc_id = str(item.get("id", len(documents)))
            metadata = {str(k): str(v) for k, v in (item.get("metadata") or {}).items()}
            documents.append(Document(doc_id, str(item["text"]), metadata, str(item.get("format") or "text")))
        elif isinstance(item, dict) and "query" in item:
            query = query if query is not None else str(item["query"])
        else:
            raise SystemExit(f"input line {number}: expected a string, {{'text': ...}} or {{'query': ...}}")
    return query or "", tuple(documents)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """--option name=value; the value is read as JSON when it parses, else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option {pair!r}: expected name=value")
        try:
            options[name] = json.loads(raw)
        except json.JSONDecodeError:
            options[name] = raw
    return options


def print_result(result: CompressResult, as_json: bool, out: TextIO) -> None:
    if as_json:
        json.dump(wire.result_to_dict(result), out, ensure_ascii=False)
        out.write("\n")
        return
    out.write(result.context + "\n\n")
    ratio = f"{result.ratio:.2f}x" if result.tokens_after else "everything dropped"
    out.write(f"# method={result.method} tokens {result.tokens_before} -> {result.tokens_after} ({ratio})\n")
    for doc in result.documents:
        out.write(f"#   {doc.id}: {doc.tokens_before} -> {doc.tokens_after} tokens, score {doc.score:.3f}\n")
    if result.note:
        out.write(f"# note: {result.note}\n")


def cmd_compress(args: argparse.Namespace) -> int:
    try:
        handle = open(args.input, encoding="utf-8") if args.input not in (None, "-") else sys.stdin
    except OSError as err:
        raise InvalidRequest("input", f"{args.input}: {err.strerror or type(err).__name__}") from None
    with handle:
        query, documents = read_jsonl(handle, args.query)
    kwargs = dict(
        method=args.method or "",
        rate=args.rate,
        target_tokens=args.target_tokens,
        options=parse_options(args.options),
        **{name: getattr(args, name) for name in declared_flag_fields()},
    )
    if args.server:
        from ctxcomp.client import CtxcompClient

        with CtxcompClient(args.server) as client:
            result = client.compress(query, documents, llm=args.llm or "", **kwargs)
    else:
        from ctxcomp.hub import ModelHub
        from ctxcomp.pipeline import Compressor

        hub = ModelHub(llm_tokenizers={"cli": args.llm} if args.llm else None)
        request = CompressRequest(query=query, documents=documents, llm="cli" if args.llm else "", **kwargs)
        result = Compressor(hub).compress(request)
    print_result(result, args.json, sys.stdout)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # oneDNN caches one primitive per distinct tensor shape (1024 by default); requests of
    # ever-new lengths made the server's RSS grow ~27% under load (bench/load.py). With bf16
    # encoders (what --precision auto picks on AMX CPUs) every matmul goes through oneDNN, and a
    # cache of 2 cost a third of the throughput (P2 0.65x); 64 keeps 0.98x and growth at 8%
    # (docs/performance.md, "Service under load"). Must be set before torch runs.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    from ctxcomp import threads
    from ctxcomp.pipeline import Compressor
    from ctxcomp.service import logs
    from ctxcomp.service.server import serve
    from ctxcomp.service.tenants import Tenants

    try:
        values = settings.resolve(args)
    except ValueError as err:  # a CTXCOMP_* variable that does not parse
        raise SystemExit(f"ctxcomp serve: {err}") from None
    logs.configure(getattr(logging, args.log_level.upper()))
    thread_plan = threads.plan_threads(values["workers"], values["threads"])
    threads.apply(thread_plan)
    logging.getLogger("ctxcomp.service").info(thread_plan.describe())
    tenants = Tenants.from_file(values["auth_tokens_file"]) if values["auth_tokens_file"] else None
    config = settings.configs(values, settings.SERVER, warm_methods=preload_methods(values["preload"]), tenants=tenants,
                              batching=settings.configs(values, settings.BATCHER))
    if config.playground and config.http_port is None:
        raise SystemExit("ctxcomp serve: --playground is a page of the HTTP API: give --http-port too")

    def on_ready(server: Server) -> None:
        if values["port_file"]:
            tmp = Path(values["port_file"] + ".tmp")
            tmp.write_text(str(server.port))
            tmp.rename(values["port_file"])

    kv_store = open_store(values, tenants)
    from ctxcomp.hub import ModelHub

    try:
        hub = ModelHub(device=values["device"], precision=values["precision"], llm_tokenizers=dict(values["llm_tokenizer"]))
    except ValueError as err:  # a CPU-only precision on a GPU
        raise SystemExit(f"ctxcomp serve: {err}") from None
    logging.getLogger("ctxcomp.service").info("models run on %s%s", hub.device, " in bf16" if hub.device != "cpu" else "")
    compressor = Compressor(hub, settings.configs(values, settings.LIMITS), kv_store=kv_store,
                            kv_chunk_tokens=values["kv_chunk_tokens"])
    asyncio.run(serve(compressor, config, on_ready=on_ready))
    return 0


def open_store(values: dict[str, Any], tenants: Tenants | None) -> KvTarget | None:
    """The KV store `--kv-store` names (None without one); an LMCache store takes one tenant only."""
    if not values["kv_store"]:
        return None
    from ctxcomp.kv.stage import open_kv_store

    store = open_kv_store(values["kv_store"], timeout_s=values["kv_store_timeout"],
                          retry_after_s=values["kv_store_retry_after"], max_bytes=values["kv_store_max_bytes"])
    if store.shared_namespace and tenants is not None and len({t for t, _ in tenants.tokens}) > 1:
        raise SystemExit("an LMCache store (lmcache+fs://) is one namespace under vLLM's keys: it cannot keep "
                         "tenants apart; use a file:// or redis:// store, or one tenant")
    return store


def preload_methods(flag: str) -> tuple[str, ...]:
    """--preload: "all" (every method whose models can load here) or method names, comma-separated."""
    if flag.strip() == "all":
        return tuple(methods.method_names())
    names = tuple(n.strip() for n in flag.split(",") if n.strip())
    for name in names:
        try:
            for stage in name.split(methods.CHAIN_SEPARATOR):
                methods.method_class(stage)
        except InvalidRequest as err:
            raise SystemExit(f"ctxcomp serve: --preload: {err.message}") from None
    return names


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server reports SERVING (container health checks)."""
    import grpc

    from ctxcomp.client import CtxcompClient

    try:
        with CtxcompClient(args.server, timeout=args.timeout) as client:
            status = client.health()
    except grpc.RpcError as err:
        print(f"ctxcomp: {args.server}: {err.code().name}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_models(args: argparse.Namespace) -> int:
    if args.prepare:
        from ctxcomp.pipeline import Compressor

        Compressor().warm_up()  # every model the default method needs, through the one hub
    for row in models.describe_roles():
        print(f"{row['role']:<18} {row['kind']:<8} {row['location']}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name in methods.method_names():
        cls = methods.method_class(name)
        print(f"{name}: {cls.description}")
        for option in describe_options(cls.presets["default"]):
            print(f"    {option['name']} ({option['type']}, default {option['default_json']}): {option['help']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start `ctxcomp serve` on a free port, send the embedded sample through the client, stop it.

    The server runs as the installed console script from a temporary folder, as a user's would:
    nothing of the working directory (a checkout, say) is on its import path.
    """
    from ctxcomp.client import CtxcompClient
    from ctxcomp.pipeline import sample_request

    sample = sample_request()
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [console_script(), "serve", "--port", "0", "--port-file", str(port_file), "--preload", methods.DEFAULT_METHOD],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp,
        )
        try:
            port = _wait_for_port(port_file, server, timeout=args.timeout)
            with CtxcompClient(f"127.0.0.1:{port}") as client:
                print(f"server health: {client.health()}", flush=True)
                print(f"query: {sample.query}\n", flush=True)
                result = client.compress(sample.query, list(sample.documents), rate=args.rate)
            print_result(result, False, sys.stdout)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


def console_script() -> str:
    """The installed `ctxcomp` command: beside this interpreter (a venv's bin/), else on PATH."""
    found = shutil.which("ctxcomp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise SystemExit("the `ctxcomp` console script is not installed: run `pip install -e .` (or `make install`)")
    return found


def _wait_for_port(port_file: Path, server: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode} before it was ready")
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def cmd_batch(args: argparse.Namespace) -> int:
    """Compress a corpus (JSONL or Parquet: id, text, optional query) into Parquet parts."""
    from ctxcomp.batch import JobConfig, run
    from ctxcomp.batch.runner import Interrupted

    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise InvalidRequest("options", "must be a JSON object")
    config = JobConfig(
        method=args.method or methods.DEFAULT_METHOD, rate=args.rate, target_tokens=args.target_tokens,
        options=options, kv_store=args.kv_store or "", kv_codec=args.kv_codec, embeddings=args.embeddings,
    )
    try:
        figures = run(Path(args.input), Path(args.output), config, engine=args.engine, batch_size=args.batch_size,
                      workers=args.workers, threads=args.threads, progress=not args.no_progress)
    except Interrupted as stopped:
        print(json.dumps(stopped.figures), flush=True)
        print(f"ctxcomp batch: {stopped}; run the same command again to resume", file=sys.stderr, flush=True)
        return 130
    print(json.dumps(figures), flush=True)
    return 0


# Request fields whose `ctxcomp compress` flags are written by hand (their values are read or
# parsed specially); every other field the CLI offers gets its flag from its declaration.
HAND_WRITTEN_FLAGS = ("query", "method", "rate", "target_tokens", "options", "llm")


def declared_flag_fields() -> tuple[str, ...]:
    return tuple(
        spec_field.name for spec_field, spec in request_fields()
        if spec.on_wire and not spec.not_on_cli and spec_field.name not in HAND_WRITTEN_FLAGS
    )


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per declared request field (help, choices, default from ctxcomp.types)."""
    hints = typing.get_type_hints(CompressRequest)
    specs = {spec_field.name: (spec_field, spec) for spec_field, spec in request_fields()}
    for name in declared_flag_fields():
        spec_field, spec = specs[name]
        flag = "--" + (spec.flag or name.replace("_", "-"))
        kind = hints[name]
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", help=spec.help)
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=spec.choices or None,
                                default=field_default(spec_field), help=spec.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxcomp", description="Context compression for RAG.")
    parser.add_argument("--log-level", choices=["debug", "info", "warning"], default="info",
                        help="debug also lets third-party warnings, progress bars and gRPC's own lines through")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress documents from JSONL (file or stdin)")
    p.add_argument("input", nargs="?", help="JSONL file; '-' or nothing reads stdin")
    p.add_argument("--query", help="the query (else a {'query': ...} line, else empty)")
    p.add_argument("--method", help=f"one of: {', '.join(methods.method_names())}")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--rate", type=float, help="kept share of tokens, in (0, 1]")
    target.add_argument("--target-tokens", type=int, help="token budget over all documents")
    p.add_argument("--option", action="append", default=[], dest="options", metavar="NAME=VALUE",
                   help="method option (repeatable)")
    add_request_flags(p)
    p.add_argument("--server", help="host:port of a running ctxcomp server (default: compress in-process)")
    p.add_argument("--llm", help="count the budget and tokens in your LLM's tokenizer: in-process a HF id, folder or "
                                 ".gguf file; with --server the name the server loaded it under (--llm-tokenizer)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("serve", help="run the gRPC server until SIGTERM", allow_abbrev=False,
                       description="Each setting is its flag, else its CTXCOMP_* variable, else its default "
                                   "(docs/operations.md has the table). The bearer token comes from "
                                   "CTXCOMP_AUTH_TOKEN, never a flag (flags show in `ps`).")
    settings.add_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("batch", help="compress a corpus (JSONL/Parquet) into Parquet, resumably")
    p.add_argument("input", help="JSONL or .parquet with id, text and optional query")
    p.add_argument("output", help="output folder (parts, manifest); rerun the same command to resume")
    p.add_argument("--method", help=f"one of: {', '.join(methods.method_names())}, or a chain a>b")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--rate", type=float, help="kept share of tokens per record, in (0, 1]")
    target.add_argument("--target-tokens", type=int, help="token budget per record")
    p.add_argument("--options", help="method options as a JSON object")
    p.add_argument("--kv-store", help="also store each record's KV blob here (file:///path or redis://...)")
    p.add_argument("--kv-codec", default="fp16", help="fp16, bf16, int8, int4, transform or headpca")
    p.add_argument("--embeddings", action="store_true", help="embed compressed texts and build a faiss index")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--batch-size", type=int, default=64, help="records per batch")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (--engine ray)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads per worker (default 0: the cores this process may use / workers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("health", help="exit 0 if a server reports SERVING")
    p.add_argument("--server", default=f"127.0.0.1:{settings.from_environment('port')}")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("models", help="list model roles and their sources")
    p.add_argument("--prepare", action="store_true", help="load (and convert/cache) the default models now")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="list compression methods and their options")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="serve the embedded sample request once and print the result")
    p.add_argument("--rate", type=float, default=DEMO_RATE)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.set_defaults(func=cmd_demo)
    return parser


def quiet_libraries(level: str) -> None:
    """Keep library chatter (warnings, load reports, progress bars, gRPC's C-core lines) out of
    the CLI's output, unless the log level is debug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if level == "debug":
        return
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when gRPC's core starts, after this
    warnings.simplefilter("ignore")
    warnings.filterwarnings("default", module=r"ctxcomp(\.|$)")
    for name in ("sentence_transformers", "transformers", "openvino", "nncf", "ray", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)  # sentence-transformers' bars follow its logger
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def exit_quietly(code: int) -> None:
    """Exit now, after the atexit handlers but before the interpreter's teardown, where native
    extensions that torch imports (triton's nanobind modules) print pages of leak reports."""
    import atexit

    logging.shutdown()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or stdout_closed()
    sys.stderr.flush()
    os._exit(code)


def stdout_closed() -> int:
    """The reader of stdout went away (`ctxcomp methods | head`): it has what it wanted. Point
    stdout at /dev/null so the output still buffered is dropped without a traceback, and return
    the shell's status for a process that SIGPIPE ended (128 + 13)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    quiet_libraries(args.log_level)
    try:
        return args.func(args)
    except CtxcompError as err:
        print(f"ctxcomp: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed()


def console_main() -> None:
    """The `ctxcomp` command (and `python -m ctxcomp.cli`)."""
    args = build_parser().parse_args()
    code = run_command(args)
    if args.log_level == "debug":
        sys.exit(code)
    exit_quietly(code)


if __name__ == "__main__":
    console_main()
