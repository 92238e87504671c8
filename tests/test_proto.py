"""The checked-in generated code matches proto/ (regenerate with `make proto`)."""

from __future__ import annotations

from pathlib import Path

from ctxcomp import protogen


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    assert fresh, "protoc wrote nothing"
    for path in fresh:
        relative = path.relative_to(tmp_path)
        checked_in = protogen.REPO / relative
        assert checked_in.exists(), f"{relative} is not checked in; run `make proto`"
        assert checked_in.read_text() == path.read_text(), f"{relative} drifted from the .proto; run `make proto`"
