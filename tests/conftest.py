"""Session-wide fixtures: real models, loaded once; a real server on a free loopback port."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Encoders in fp32 unless a test asks otherwise: "auto" picks the fastest form per machine, and
# tests that pin kept words must not depend on the CPU they run on (tests/models/test_precision.py
# tests auto, bf16 and int8 themselves).
os.environ.setdefault("CTXCOMP_PRECISION", "fp32")
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
    from training import squad

    return squad.splits().test


class RedisServer:
    """A real redis-server on a free loopback port that a test can kill, restart, freeze and thaw."""

    def __init__(self, folder) -> None:
        import shutil
        import socket

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        import socket
        import subprocess
        import time

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def freeze(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    running = RedisServer(tmp_path)
    yield running
    running.stop()
