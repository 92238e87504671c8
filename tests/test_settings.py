"""`ctxcomp serve`'s settings: flag, then CTXCOMP_* variable, then the default its config
dataclass holds; the docs' table is the declaration's (tests/test_docs.py renders it)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ctxcomp import settings
from ctxcomp.cli import build_parser
from ctxcomp.pipeline import Limits
from ctxcomp.service.microbatcher import BatcherConfig
from ctxcomp.service.server import ServerConfig

ROOT = Path(__file__).resolve().parents[1]


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


def test_a_flag_beats_its_variable_which_beats_the_default() -> None:
    environ = {"CTXCOMP_MAX_BATCH": "7", "CTXCOMP_MAX_QUEUE": "9", "CTXCOMP_PLAYGROUND": "1"}
    values = settings.resolve(serve_args("--max-batch", "3"), environ)
    assert (values["max_batch"], values["max_queue"], values["playground"]) == (3, 9, True)
    assert values["large_cost"] == BatcherConfig().large_cost
    assert settings.resolve(serve_args(), {})["port"] == ServerConfig().port


def test_the_configs_are_built_from_the_resolved_values() -> None:
    values = settings.resolve(serve_args("--grace", "2.5", "--max-request-cost", "1000", "--company-wait", "0"),
                              {"CTXCOMP_AUTH_TOKEN": "secret"})
    server = settings.configs(values, settings.SERVER, batching=settings.configs(values, settings.BATCHER))
    assert (server.grace_s, server.auth_token, server.batching.company_wait) == (2.5, "secret", 0.0)
    assert settings.configs(values, settings.LIMITS) == Limits(max_request_cost=1000)


def test_every_default_a_config_holds_is_that_configs() -> None:
    for setting in settings.SERVE_SETTINGS:
        if setting.owner:
            owner = settings.owner_class(setting.owner)
            assert setting.default_value() == getattr(owner(), setting.owner_field()), setting.flag


def test_a_variable_that_does_not_parse_is_named() -> None:
    with pytest.raises(ValueError, match=r"CTXCOMP_MAX_BATCH='many'"):
        settings.resolve(serve_args(), {"CTXCOMP_MAX_BATCH": "many"})
    with pytest.raises(ValueError, match=r"CTXCOMP_COMPANY_WAIT='2': must be in \[0, 1\]"):
        settings.resolve(serve_args(), {"CTXCOMP_COMPANY_WAIT": "2"})
    with pytest.raises(ValueError, match=r"CTXCOMP_LLM_TOKENIZER='llama': expected NAME=ID"):
        settings.resolve(serve_args(), {"CTXCOMP_LLM_TOKENIZER": "llama"})


def test_the_bearer_token_is_never_a_flag() -> None:
    """Not even as an abbreviation: `--auth-token x` would otherwise read as --auth-tokens-file."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--auth-token", "x"])


def test_every_variable_the_code_reads_is_in_the_docs_table() -> None:
    named = set()
    for path in (ROOT / "ctxcomp").rglob("*.py"):
        named |= set(re.findall(r"CTXCOMP_[A-Z_]+[A-Z]", path.read_text()))
    table = settings.markdown()
    missing = sorted(name for name in named if f"`{name}`" not in table and name != settings.VARIABLE_PREFIX.rstrip("_"))
    assert not missing, f"CTXCOMP_* variables read by ctxcomp/ and missing from the settings tables: {missing}"
