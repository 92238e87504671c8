"""The checkout's layout cannot shadow an installed package.

`python -m pytest`, `python -m training.<script>` and any `python -m` run from the checkout put
its root first on the import path. A top-level folder there named like another distribution's
module then wins over the installed one: a folder `kernels/` broke transformers 5.25, which
imports Hugging Face's `kernels` package. So every name importable from the root must be ours.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "ctxcomp"


def importable_names(entries: list[Path]) -> set[str]:
    """The module names a folder's entries give when the folder is on sys.path: packages (with
    or without __init__.py, since a plain folder imports as a namespace package) and modules."""
    names = set()
    for entry in entries:
        stem = entry.name.split(".")[0]
        if entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
        elif entry.suffix in (".py", ".pyc", ".so", ".pyd") and stem.isidentifier():
            names.add(stem)
    return names


def checkout_entries(root: Path) -> list[Path]:
    """The root's entries as a fresh clone has them (what git tracks), else all of them."""
    if not (root / ".git").exists():
        return list(root.iterdir())
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    return sorted({root / line.split("/")[0] for line in tracked.splitlines() if line})


def shadowed(names: set[str]) -> dict[str, list[str]]:
    """Each name that an installed distribution other than ours provides, with those distributions."""
    provided = packages_distributions()
    clashes = {name: sorted(set(provided.get(name, [])) - {PROJECT}) for name in names}
    return {name: dists for name, dists in clashes.items() if dists}


def test_no_checkout_name_shadows_an_installed_distribution() -> None:
    clashes = shadowed(importable_names(checkout_entries(ROOT)))
    assert not clashes, f"top-level names of the checkout shadow installed distributions: {clashes}"


def test_a_folder_named_like_an_installed_package_is_caught(tmp_path: Path) -> None:
    """The guard itself: a folder named like an installed module (torch is always installed) is flagged."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "training").mkdir()
    assert shadowed(importable_names(list(tmp_path.iterdir()))) == {"torch": ["torch"]}


def test_the_package_is_imported_from_its_one_tree() -> None:
    """No package-dir remapping: ctxcomp's subpackages are the folders under ctxcomp/."""
    import ctxcomp.kernels
    import ctxcomp.models
    import ctxcomp.service

    for package in (ctxcomp.kernels, ctxcomp.models, ctxcomp.service):
        assert Path(package.__file__).resolve().parent == ROOT / "ctxcomp" / package.__name__.split(".")[-1]
