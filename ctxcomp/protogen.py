"""Regenerate ctxcomp/v1/*_pb2*.py from proto/ (`make proto`).

`generate(out_dir)` is also used by the drift test, which compares a fresh
generation with the checked-in files.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO_FILES = ("ctxcomp/v1/ctxcomp.proto",)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over PROTO_FILES into out_dir; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / f) for f in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    stems = [out_dir / Path(f).with_suffix("") for f in PROTO_FILES]
    return sorted(p for stem in stems for p in stem.parent.glob(f"{stem.name}_pb2*.py*"))


def main() -> None:
    written = generate(REPO)
    sys.stdout.write("".join(f"wrote {p.relative_to(REPO)}\n" for p in written))


if __name__ == "__main__":
    main()
