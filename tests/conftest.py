"""Session-wide fixtures: real models, loaded once; a real server on a free loopback port."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:
    import torch

    if not torch.cuda.is_available():
        # Kernel tests run Triton kernels in its interpreter on CPU-only machines (CI).
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def hub():
    from ctxcomp.hub import ModelHub

    return ModelHub()


@pytest.fixture(scope="session")
def compressor(hub):
    from ctxcomp.pipeline import Compressor

    return Compressor(hub)


@pytest.fixture(scope="session")
def server(compressor):
    from ctxcomp.service.server import BackgroundServer, ServerConfig

    with BackgroundServer(compressor, ServerConfig(port=0)) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from ctxcomp.client import CtxcompClient

    with CtxcompClient(server.address, timeout=120) as connected:
        yield connected


@pytest.fixture(scope="session")
def squad_held_out():
    from ctxcomp.models.training import squad

    return squad.split_articles(squad.load_paragraphs())[1]
