"""The wheel carries every package and every shipped model file (a non-editable install, as in the Dockerfile)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(tool["packages"]), tool["package-dir"]
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    assert found - listed == set(), "packages missing from pyproject's [tool.setuptools] packages"


def test_every_shipped_model_file_is_package_data() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = tool["package-data"]["ctxcomp.models"]
    shipped = [p for p in (ROOT / "models").glob("*/*") if p.is_file() and p.suffix in (".safetensors", ".json", ".md")]
    assert shipped
    for path in shipped:
        relative = path.relative_to(ROOT / "models")
        assert any(relative.match(pattern) for pattern in patterns), f"models/{relative} is not in package-data"
