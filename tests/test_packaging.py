"""The wheel carries every package and every shipped model file (a non-editable install, as in the
Dockerfile), and building it prints no setuptools warning (issue #19: a quiet install)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


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


def installed_name(path: Path) -> str:
    """Where a file of the checkout lands in the wheel, through pyproject's package-dir mapping."""
    relative = path.relative_to(ROOT)
    package = {folder: name for name, folder in SETUPTOOLS["package-dir"].items()}[relative.parts[0]]
    return "/".join((*package.split("."), *relative.parts[1:]))


def test_every_python_package_is_in_the_wheel(wheel_names: set[str]) -> None:
    for folder in set(SETUPTOOLS["package-dir"].values()):
        for init in (ROOT / folder).rglob("__init__.py"):
            assert installed_name(init) in wheel_names, f"{init.relative_to(ROOT)} is missing from the wheel"


def test_every_shipped_model_file_is_in_the_wheel(wheel_names: set[str]) -> None:
    shipped = [p for p in (ROOT / "models").glob("*/*") if p.is_file() and p.suffix in (".safetensors", ".json", ".md")]
    assert len(shipped) >= 12
    for path in shipped:
        assert installed_name(path) in wheel_names, f"{path.relative_to(ROOT)} is missing from the wheel"
    assert "ctxcomp/samples/rag_request.json" in wheel_names
    assert "ctxcomp/v1/ctxcomp_pb2.pyi" in wheel_names
