"""The clients raise the in-process API's exceptions for a server's error statuses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import pytest

from ctxcomp.client import AsyncCtxcompClient, CtxcompClient
from ctxcomp.errors import InvalidRequest, Unavailable
from ctxcomp.types import CompressRequest, Document

TEXT = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris, France."


def test_a_bad_request_raises_what_it_raises_in_process(client, compressor) -> None:
    with pytest.raises(InvalidRequest) as local:
        compressor.compress(CompressRequest("When?", (Document("0", TEXT),), rate=5.0))
    with pytest.raises(InvalidRequest) as remote:
        client.compress("When?", [TEXT], rate=5.0)
    assert remote.value.field == local.value.field == "rate"
    assert str(remote.value) == str(local.value)
    assert isinstance(remote.value, grpc.RpcError) and remote.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_async_client_raises_the_same(server) -> None:
    async def scenario() -> None:
        client = AsyncCtxcompClient(server.address, timeout=60)
        try:
            with pytest.raises(InvalidRequest, match="did you mean 'cascade'") as caught:
                await client.compress("When?", [TEXT], method="casacde")
            assert caught.value.field == "method"
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_unreachable_server_raises_unavailable() -> None:
    """Overloaded from a full queue: tests/service/test_servicer.py."""
    with CtxcompClient("127.0.0.1:9", timeout=5) as nobody, pytest.raises(Unavailable):
        nobody.compress("When?", [TEXT])


def test_the_cli_prints_one_line_for_a_remote_bad_request(server) -> None:
    done = subprocess.run([sys.executable, "-m", "ctxcomp.cli", "compress", "--server", server.address, "--query", "When?",
                           "--rate", "5"], input=json.dumps({"id": "a", "text": TEXT}), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["ctxcomp: rate: must be in (0, 1], got 5.0"]


def test_a_remote_bad_request_reads_like_the_in_process_one(client, compressor) -> None:
    import grpc

    from ctxcomp.errors import InvalidRequest
    from ctxcomp.types import CompressRequest, Document

    with pytest.raises(InvalidRequest) as remote:
        client.compress("Why?", ["Some text."], rate=2.0)
    with pytest.raises(InvalidRequest) as local:
        compressor.plan(CompressRequest("Why?", (Document("0", "Some text."),), rate=2.0))
    assert (remote.value.field, remote.value.message, str(remote.value)) == (local.value.field, local.value.message, str(local.value))
    assert remote.value.code() == grpc.StatusCode.INVALID_ARGUMENT and remote.value.details() == str(local.value)


def test_the_client_and_the_wrappers_import_without_torch() -> None:
    """A RAG app that talks to a remote server does not pay for torch or transformers at import
    (haystack itself imports torch, so its wrapper is not in the list)."""
    import subprocess
    import sys

    code = ("import sys, ctxcomp, ctxcomp.client, ctxcomp.langchain, ctxcomp.llamaindex; "
            "print(sorted(m for m in ('torch', 'transformers', 'ctxcomp.pipeline') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
