"""Every setting of `ctxcomp serve`, declared once: its flag, its CTXCOMP_* variable, its
default and what it does.

A setting is read once, in this order: its flag, then its variable (`--max-batch` reads
CTXCOMP_MAX_BATCH), then its default. A setting that a component's config holds
(ServerConfig, BatcherConfig, Limits) takes its default from that dataclass field, so the
default is written in one place; `configs` builds those dataclasses from the resolved values.
The process-wide variables (model locations, cache folder, downloads) are the model
registry's, read where the models load; both tables are generated into docs/operations.md
(`python -m ctxcomp.settings`, checked by tests/test_settings.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

VARIABLE_PREFIX = "CTXCOMP_"
SERVER = "ctxcomp.service.server:ServerConfig"
BATCHER = "ctxcomp.service.microbatcher:BatcherConfig"
LIMITS = "ctxcomp.pipeline:Limits"


def share(value: str) -> float:
    """A share in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def switch(value: str) -> bool:
    """A variable's on/off value: 1, true, yes, on or 0, false, no, off, empty."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected 1 or 0 (true or false), got {value!r}")


def named_tokenizer(value: str) -> tuple[str, str]:
    """NAME=ID (a HF id, folder or .gguf file)."""
    name, sep, location = value.partition("=")
    if not sep or not name.strip() or not location.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=ID (a HF id, folder or .gguf file), got {value!r}")
    return name.strip(), location.strip()


@dataclass(frozen=True)
class Setting:
    """One setting. `owner` ("module:Class") is the config dataclass whose field `name` holds
    it and gives its default; without one, `default` does."""

    flag: str
    help: str
    owner: str = ""
    field: str = ""  # the owner's field, where it is not the flag's name
    default: Any = None
    type: Callable[[str], Any] = str
    kind: str = "value"  # "value", "switch" (a flag without a value) or "list" (repeatable)
    variable: bool = True  # False: no CTXCOMP_* variable (a per-process path, say)

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return VARIABLE_PREFIX + self.name.upper() if self.variable else ""

    def owner_field(self) -> str:
        return self.field or self.name

    def default_value(self) -> Any:
        if not self.owner:
            return self.default
        found = {f.name: f for f in dataclasses.fields(owner_class(self.owner))}[self.owner_field()]
        return found.default_factory() if found.default is dataclasses.MISSING else found.default

    def from_text(self, text: str) -> Any:
        if self.kind == "switch":
            return switch(text)
        if self.kind == "list":
            return [self.type(part) for part in text.split(",") if part.strip()]
        return self.type(text)


def owner_class(owner: str) -> type:
    module, _, name = owner.partition(":")
    return getattr(importlib.import_module(module), name)


def device(value: str) -> str:
    from ctxcomp.models.registry import check_device

    try:
        return check_device(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def precision(value: str) -> str:
    from ctxcomp.models import precision as encoder_precision

    try:
        return encoder_precision.check(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


SERVE_SETTINGS: tuple[Setting, ...] = (
    Setting("--host", "address to listen on", SERVER),
    Setting("--port", "gRPC port; 0 picks a free one", SERVER, type=int),
    Setting("--workers", "threads running model work", SERVER, type=int),
    Setting("--threads", "torch intra-op threads per worker (0: the cores this process may use / workers)",
            default=0, type=int),
    Setting("--device", "where the encoders and the LLM run: cpu, cuda or cuda:N (bf16 there)", default="cpu",
            type=device),
    Setting("--precision", "encoders on CPU: auto (the fastest on this machine, timed at start-up and logged), fp32, "
            "bf16, int8 (torch), openvino-fp32 or openvino-int8", default="auto", type=precision),
    Setting("--llm-tokenizer", "load this LLM's tokenizer alone (HF id, folder or .gguf) under NAME: requests with "
            "llm=NAME count their budget and tokens in it (NAME=ID; repeatable, comma-separated in the variable)",
            default=(), type=named_tokenizer, kind="list"),
    Setting("--preload", "methods whose models load and run the embedded sample before health turns SERVING, "
            "comma-separated, or 'all'; any other method loads on first use", default="cascade,llmlingua2"),
    Setting("--grace", "seconds in-flight requests get on shutdown", SERVER, field="grace_s", type=float),
    Setting("--max-batch", "requests compressed together at most", BATCHER, type=int),
    Setting("--company-wait", "before a batch, wait for as many requests as the last batch had, up to this share of "
            "its model time (0: take whatever has queued)", BATCHER, type=share),
    Setting("--max-queue", "waiting requests before RESOURCE_EXHAUSTED", BATCHER, type=int),
    Setting("--max-queued-tokens", "cost units (about a document token each) waiting in a lane before "
            "RESOURCE_EXHAUSTED", BATCHER, type=int),
    Setting("--large-cost", "requests costing more run alone, in slices between model batches, with small batches "
            "in between", BATCHER, type=int),
    Setting("--max-request-tokens", "downstream-LLM tokens one request may hold (more: INVALID_ARGUMENT naming "
            "documents)", LIMITS, type=int),
    Setting("--max-request-cost", "estimated model work one request may take, in units of a document token through "
            "the default method (HTML elements and KV prefill tokens cost more). More: "
            "INVALID_ARGUMENT naming the field that makes it big", LIMITS, type=int),
    Setting("--kv-store", "keep KV blobs here (file:///path or redis://host:port/db) and return keys; or write them "
            "as LMCache chunks for vLLM (lmcache+fs:///path?model=NAME&hash_seed=0, docs/kv.md)", default=""),
    Setting("--kv-chunk-tokens", "with --kv-store: tokens per chained KV chunk for prefix reuse (0: whole contexts "
            "only)", default=256, type=int),
    Setting("--kv-store-timeout", "seconds a KV store call may take before the request gets UNAVAILABLE",
            default=0.5, type=float),
    Setting("--kv-store-retry-after", "after a store failure, seconds during which store calls fail at once (that "
            "blob's only, when the failure is one blob's)", default=1.0, type=float),
    Setting("--kv-store-max-bytes", "a file:// store's capacity: least recently used blobs are deleted to make room "
            "(redis: the server's maxmemory with an LRU policy); unset: unbounded", default=None, type=int),
    Setting("--tls-cert", "PEM certificate chain (with --tls-key: serve TLS only)", SERVER, field="tls_cert_file"),
    Setting("--tls-key", "PEM private key", SERVER, field="tls_key_file"),
    Setting("--metrics-port", "serve Prometheus /metrics on this port (0: a free one); unset: off", SERVER, type=int),
    Setting("--metrics-host", "address of /metrics", SERVER),
    Setting("--http-port", "serve the HTTP/JSON API on this port too (POST /v1/compress, GET /v1/methods, /healthz, "
            "/openapi.json), transcoded to gRPC with the same auth and limits; unset: off", SERVER, type=int),
    Setting("--http-host", "address of the HTTP/JSON API (empty: --host)", SERVER),
    Setting("--playground", "with --http-port: a page at / to try methods on pasted documents (off by default: anyone "
            "who reaches the port may use it, within the same auth)", SERVER, kind="switch"),
    Setting("--auth-tokens-file", "bearer tokens of several tenants, one 'TENANT TOKEN' a line: each tenant's KV cache "
            "is its own", default=""),
    Setting("--port-file", "write the bound port here once serving", default="", variable=False),
)
# The one bearer token of a single-tenant server: a variable only, since flags show in `ps`.
AUTH_TOKEN = Setting("--auth-token", "bearer token every RPC but health needs (tenant 'default'); a variable only, "
                     "since flags show in `ps`", SERVER)


# Variables read where they act, by every ctxcomp process (not settings of one server).
PROCESS_VARIABLES = (
    ("CTXCOMP_CACHE_DIR", "`$XDG_CACHE_HOME/ctxcomp`", "where converted models (the LLM's GGUF as safetensors, "
     "OpenVINO graphs) are kept (ctxcomp.models.registry)"),
    ("CTXCOMP_ALLOW_DOWNLOAD", "`0`", "`1`: a role set to a Hugging Face id may be downloaded; otherwise only local "
     "paths and installed packages load (ctxcomp.models.registry)"),
    ("CTXCOMP_OMP_PASSIVE", "`1`", "`0`: leave OMP_WAIT_POLICY as it is instead of PASSIVE, whose idle OpenMP "
     "threads sleep rather than spin between batches (ctxcomp.threads)"),
    ("CTXCOMP_TOKEN", "unset", "the bearer token the Haystack component sends to a remote server (ctxcomp.haystack)"),
)


def shown_default(value: Any) -> str:
    if value is None or value == "" or value == ():
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def add_flags(parser: argparse.ArgumentParser, settings: tuple[Setting, ...] = SERVE_SETTINGS) -> None:
    """One flag per setting; a flag left out reads as None, so `resolve` can tell it from a value."""
    for setting in settings:
        where = f"; {setting.env}" if setting.env else ""
        text = f"{setting.help} (default: {shown_default(setting.default_value()).strip('`')}{where})"
        if setting.kind == "switch":
            parser.add_argument(setting.flag, dest=setting.name, action="store_const", const=True, default=None, help=text)
        elif setting.kind == "list":
            parser.add_argument(setting.flag, dest=setting.name, action="append", type=setting.type, default=None,
                                metavar="NAME=ID", help=text)
        else:
            parser.add_argument(setting.flag, dest=setting.name, type=setting.type, default=None, help=text)


def resolve(
    args: argparse.Namespace | None, environ: Mapping[str, str] = os.environ,
    settings: tuple[Setting, ...] = (*SERVE_SETTINGS, AUTH_TOKEN),
) -> dict[str, Any]:
    """Each setting's value: its flag, else its variable, else its default. A variable that does
    not parse raises ValueError naming it."""
    values = {}
    for setting in settings:
        given = getattr(args, setting.name, None) if args is not None else None
        if given is None and setting.env and environ.get(setting.env, "") != "":
            try:
                given = setting.from_text(environ[setting.env])
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise ValueError(f"{setting.env}={environ[setting.env]!r}: {err}") from None
        values[setting.name] = setting.default_value() if given is None else given
    return values


def configs(values: Mapping[str, Any], owner: str, **extra: Any) -> Any:
    """The `owner` config dataclass from resolved values (its settings') and `extra` fields."""
    fields = {s.owner_field(): values[s.name] for s in (*SERVE_SETTINGS, AUTH_TOKEN) if s.owner == owner and s.name in values}
    return owner_class(owner)(**fields, **extra)


def from_environment(name: str, environ: Mapping[str, str] = os.environ) -> Any:
    """One setting's value from its variable, else its default (for library use, no flags)."""
    setting = next(s for s in (*SERVE_SETTINGS, AUTH_TOKEN) if s.name == name)
    return resolve(None, environ, (setting,))[name]


def markdown() -> str:
    """The settings tables of docs/operations.md."""
    from ctxcomp.models.registry import ROLES

    lines = ["| flag of `ctxcomp serve` | variable | default | what it does |", "|---|---|---|---|"]
    for setting in (*SERVE_SETTINGS, AUTH_TOKEN):
        flag = "" if setting is AUTH_TOKEN else f"`{setting.flag}`"
        default = shown_default(setting.default_value())
        lines.append(f"| {flag} | {f'`{setting.env}`' if setting.env else ''} | {default} | {setting.help} |")
    lines += ["", "| variable | default | what it does |", "|---|---|---|"]
    for spec in ROLES.values():
        location = spec.hint.partition(f"set {spec.env_var} to ")[2] or "a HF id or a path"
        lines.append(f"| `{spec.env_var}` | {spec.default} | where the {spec.name} role loads from: {location} |")
    lines += [f"| `{name}` | {default} | {what} |" for name, default, what in PROCESS_VARIABLES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
