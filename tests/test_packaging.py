"""The wheel carries every package and every shipped model file (a non-editable install, as in the
Dockerfile) and nothing else, and building it prints no setuptools warning (a quiet install)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Builds the wheel the way pip's backend does, with every setuptools warning raised as an error."""
    out = tmp_path_factory.mktemp("wheel")
    build = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.build_wheel(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", build, str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with zipfile.ZipFile(out / done.stdout.strip().splitlines()[-1]) as wheel:
        return set(wheel.namelist())


def test_every_python_package_is_in_the_wheel(wheel_names: set[str]) -> None:
    inits = list((ROOT / "ctxcomp").rglob("__init__.py"))
    assert len(inits) >= 8
    for init in inits:
        assert init.relative_to(ROOT).as_posix() in wheel_names, f"{init.relative_to(ROOT)} is missing from the wheel"


def test_every_shipped_model_file_is_in_the_wheel(wheel_names: set[str]) -> None:
    models = ROOT / "ctxcomp" / "models"
    shipped = [p for p in models.glob("*/*") if p.is_file() and p.suffix in (".safetensors", ".json", ".md")]
    assert len(shipped) >= 12
    for path in shipped:
        assert path.relative_to(ROOT).as_posix() in wheel_names, f"{path.relative_to(ROOT)} is missing from the wheel"
    assert "ctxcomp/samples/rag_request.json" in wheel_names
    assert "ctxcomp/v1/ctxcomp_pb2.pyi" in wheel_names


def test_checkout_scripts_stay_out_of_the_wheel(wheel_names: set[str]) -> None:
    """Training, benches and tests run from a checkout; the wheel is the ctxcomp package alone."""
    top = {name.split("/")[0] for name in wheel_names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"ctxcomp"}


def declared_dependencies(group: str | None = None) -> set[str]:
    """Distribution names of pyproject's `dependencies` (group None) or of one extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_client_needs_only_the_default_install() -> None:
    """`import ctxcomp.client` (a RAG app talking to a remote server) loads packages of
    pyproject's `dependencies` alone: torch and the rest are `ctxcomp[server]`'s. grpc's own
    optional imports (grpc_tools, ...) are loaded before the count starts."""
    code = ("import sys, grpc; before = set(sys.modules); import ctxcomp.client; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} | {'grpc'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    distributions = importlib.metadata.packages_distributions()
    used = {canonical(d) for module in done.stdout.split() for d in distributions.get(module, ())}
    assert "torch" not in used
    assert used - {"ctxcomp"} <= declared_dependencies(), sorted(used - {"ctxcomp"} - declared_dependencies())
    assert declared_dependencies("client") == set()


def test_the_server_extra_holds_what_the_server_imports() -> None:
    """The heavy packages are in `ctxcomp[server]`, none in the default install."""
    server = declared_dependencies("server")
    assert {"torch", "transformers", "numpy", "grpcio-reflection", "aiohttp"} <= server
    assert not server & declared_dependencies()
