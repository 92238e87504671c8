"""KV blob format: round trips, quantized codecs, and refusal of bad blobs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctxcomp.kv import blob
from ctxcomp.kv.handoff import blob_from_prefill, cache_from_blob
from ctxcomp.kv.prefill import prefill

L, H, S, D = 3, 2, 17, 64


def meta(**changes) -> blob.BlobMeta:
    base = blob.BlobMeta("fp-abc", "m", L, H, D, S, blob.token_ids_digest(range(S)), 0, 1e5)
    return dataclasses.replace(base, **changes)


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    k = [torch.randn(1, H, S, D, generator=g) * torch.linspace(0.1, 5, D) for _ in range(L)]  # channel outliers
    v = [torch.randn(1, H, S, D, generator=g) for _ in range(L)]
    return k, v


@pytest.mark.parametrize(("codec", "tolerance"), [("fp16", 2e-3), ("bf16", 2e-2), ("int8", 2e-2), ("int4", 0.2)])
@pytest.mark.parametrize("zstd_level", [None, 3])
def test_round_trip(codec, tolerance, zstd_level) -> None:
    k, v = tensors()
    data = blob.encode(k, v, meta(), codec=codec, zstd_level=zstd_level)
    k2, v2, m = blob.decode(data, expect_fingerprint="fp-abc")
    assert m.codec == codec and m.tokens == S and m.k_rope == "post" and m.layout == "LHSD"
    want_k, want_v = torch.stack([t[0] for t in k]), torch.stack([t[0] for t in v])
    assert ((k2 - want_k).abs().amax(dim=2) <= tolerance * want_k.abs().amax(dim=2) + 1e-6).all()
    assert ((v2 - want_v).abs().amax(dim=3) <= tolerance * want_v.abs().amax(dim=3) + 1e-6).all()


def test_quantized_blobs_are_smaller() -> None:
    k = [torch.randn(1, H, 512, D) for _ in range(L)]
    sizes = {c: len(blob.encode(k, k, meta(tokens=512), codec=c)) for c in ("fp16", "int8", "int4")}
    assert sizes["fp16"] / sizes["int8"] > 1.7
    assert sizes["fp16"] / sizes["int4"] > 3.0


def test_corrupt_blob_is_refused() -> None:
    k, v = tensors()
    data = bytearray(blob.encode(k, v, meta(), codec="int8"))
    data[-10] ^= 0xFF
    with pytest.raises(blob.BlobRefused, match="checksum"):
        blob.decode(bytes(data), expect_fingerprint="fp-abc")
    with pytest.raises(blob.BlobRefused, match="not a readable"):
        blob.decode(b"garbage" * 10, expect_fingerprint="fp-abc")
    zipped = bytearray(blob.encode(k, v, meta(), zstd_level=3))
    zipped[len(blob.ZSTD_MAGIC) + 5] ^= 0xFF
    with pytest.raises(blob.BlobRefused):
        blob.decode(bytes(zipped), expect_fingerprint="fp-abc")


def test_wrong_model_is_refused() -> None:
    k, v = tensors()
    data = blob.encode(k, v, meta())
    with pytest.raises(blob.BlobRefused, match="made for model m"):
        blob.decode(data, expect_fingerprint="fp-other")


def test_token_digest_is_stable() -> None:
    # Fixed value: identical across processes and machines (content addressing relies on it).
    assert blob.token_ids_digest([1, 2, 3]) == blob.token_ids_digest((1, 2, 3))
    assert blob.token_ids_digest([1, 2, 3]) == "e2e2033ae7e19d680599d4eb0a1359a2b48ec5baac75066c317fbf85159c54ef"


@pytest.mark.parametrize("codec", ["fp16", "int8", "transform"])
def test_blob_continues_generation_like_full_prefill(llm, squad_held_out, codec) -> None:
    text = squad_held_out[5].context
    ids = llm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :150]
    question = llm.tokenizer(" Q: what is the passage about? A:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, question], dim=1)
    data = blob_from_prefill(prefill(llm.model, ids, backend="reference"), llm, ids[0].tolist(), codec=codec, zstd_level=3)
    cache, meta_ = cache_from_blob(data, llm)
    assert meta_.token_ids_sha256 == blob.token_ids_digest(ids[0].tolist())
    with torch.inference_mode():
        want = llm.model.generate(full, max_new_tokens=6, do_sample=False)[:, full.shape[1]:]
        got = llm.model.generate(full, past_key_values=cache, max_new_tokens=6, do_sample=False)[:, full.shape[1]:]
    assert got[0, 0] == want[0, 0]
    if codec == "fp16":
        assert got.tolist() == want.tolist()


def test_cache_from_blob_refuses_another_model(llm) -> None:
    k, v = tensors()
    with pytest.raises(blob.BlobRefused, match="not for this model"):
        cache_from_blob(blob.encode(k, v, meta()), llm)


def test_kv_blob_through_grpc_stream_is_verified_and_usable(client, llm, compressor) -> None:
    from ctxcomp.types import CompressRequest
    from ctxcomp.types import Document as Doc

    docs = [Doc("a", "The Vasa was a Swedish warship that sank on her maiden voyage in 1628."), Doc("b", "She was raised in 1961.")]
    result, data = client.compress_with_kv("When did the Vasa sink?", docs, rate=0.6, kv_codec="int8")
    assert data is not None and result.context
    local = compressor.compress(CompressRequest("When did the Vasa sink?", tuple(docs), rate=0.6, return_kv=True, kv_codec="int8"))
    assert local.context == result.context
    # The stream was checked against the blob's SHA-256 on arrival (reassemble); its content
    # matches a local computation up to int8 rounding of values at a step boundary.
    k_remote, v_remote, meta = blob.decode(data, expect_fingerprint=llm.fingerprint)
    k_local, v_local, _ = blob.decode(local.kv.data, expect_fingerprint=llm.fingerprint)
    assert (k_remote - k_local).abs().max() <= 0.02 * k_local.abs().max()
    assert (v_remote - v_local).abs().max() <= 0.02 * v_local.abs().max()
    assert meta.codec == "int8" and meta.key_group == blob.KEY_GROUP
    cache, meta = cache_from_blob(data, llm)
    ids = llm.tokenizer(result.context, add_special_tokens=False)["input_ids"]
    assert meta.tokens == len(ids) and meta.token_ids_sha256 == blob.token_ids_digest(ids)


def test_kv_request_errors_name_the_field(client) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as caught:
        client.compress_with_kv("q", ["some text"], kv_codec="int3")
    assert caught.value.details().startswith("kv_codec:")
    request = pb_request(kv_model="meta-llama/Llama-3-8B")
    with pytest.raises(grpc.RpcError) as caught:
        list(client.stub.CompressStream(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("kv_model:")
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Compress(pb_request(), timeout=60)
    assert caught.value.details().startswith("return_kv:")


def pb_request(**fields):
    from ctxcomp.v1 import ctxcomp_pb2 as pb

    return pb.CompressRequest(
        documents=[pb.Document(id="a", text="some text here")], method="llmlingua2", return_kv=True, **fields
    )


def test_stores_give_the_same_key_and_bytes(tmp_path) -> None:
    from ctxcomp.kv.store import blob_key, open_store

    key = blob_key("fp", [1, 2, 3], "int8")
    assert key == blob_key("fp", (1, 2, 3), "int8") != blob_key("fp", [1, 2, 3], "fp16")
    store = open_store(f"file://{tmp_path}/kv")
    assert store.get(key) is None
    store.put(key, b"blob-bytes")
    assert open_store(str(tmp_path / "kv")).get(key) == b"blob-bytes"
    with pytest.raises(ValueError, match="valid: file://, redis://"):
        open_store("s3://bucket/x")


def test_redis_store_against_a_real_server(redis_server) -> None:
    from ctxcomp.kv.store import blob_key, open_store

    store = open_store(redis_server.url)
    k, v = tensors()
    data = blob.encode(k, v, meta(), codec="int8", zstd_level=3)
    key = blob_key("fp-abc", range(S), "int8")
    assert store.get(key) is None
    store.put(key, data)
    again = open_store(redis_server.url).get(key)  # a second connection sees it
    assert again == data
    blob.decode(again, expect_fingerprint="fp-abc")
    store.delete(key)
    assert store.get(key) is None


def test_stream_reassembly_is_bit_exact_and_checked() -> None:
    from ctxcomp.client import reassemble
    from ctxcomp.v1 import ctxcomp_pb2 as pb

    k, v = tensors()
    data = blob.encode(k, v, meta(), codec="int4", zstd_level=3)

    def stream(payload: bytes, size: int = 1000):
        yield pb.CompressStreamChunk(response=pb.CompressResponse(method="x", kv_bytes=len(payload)))
        for offset in range(0, len(payload), size):
            yield pb.CompressStreamChunk(kv=pb.KvChunk(blob_id="k", offset=offset, data=payload[offset : offset + size]))

    _, received = reassemble(stream(data))
    assert received == data
    broken = bytearray(data)
    broken[len(broken) // 2] ^= 0x01
    with pytest.raises(blob.BlobRefused):
        reassemble(stream(bytes(broken)))
    with pytest.raises(ValueError, match="announced"):
        reassemble(list(stream(data))[:-1])


def test_attention_sink_tokens_survive_quantization_exactly() -> None:
    k, v = tensors()
    k[0][:, :, 0] *= 50  # a sink-like first token with a huge norm
    for codec in ("int8", "int4"):
        k2, v2, m = blob.decode(blob.encode(k, v, meta(), codec=codec), expect_fingerprint="fp-abc")
        assert m.sink_tokens == blob.SINK_TOKENS
        torch.testing.assert_close(k2[0, :, :4], k[0][0, :, :4].half().float())
        torch.testing.assert_close(v2[0, :, :4], v[0][0, :, :4].half().float())
    shifted = blob.encode(k, v, meta(start_pos=100), codec="int8")
    assert blob.inspect(shifted).sink_tokens == 0  # not at the start of the sequence: no sinks there


def test_compress_returns_a_transform_blob_for_the_compressed_context(compressor, llm) -> None:
    from ctxcomp.types import CompressRequest
    from ctxcomp.types import Document as Doc

    docs = (Doc("a", "The Vasa was a Swedish warship that sank on her maiden voyage in 1628."), Doc("b", "She was raised in 1961."))
    result = compressor.compress(CompressRequest("When did the Vasa sink?", docs, rate=0.6, return_kv=True, kv_codec="transform"))
    assert result.kv is not None and result.kv.codec == "transform"
    cache, meta = cache_from_blob(result.kv.data, llm)
    ids = llm.tokenizer(result.context, add_special_tokens=False)["input_ids"]
    assert meta.codec == "transform" and meta.k_rope == "pre" and meta.tokens == len(ids)
    assert cache.get_seq_length() == len(ids)


def test_an_unreachable_store_fails_fast_with_store_unavailable(redis_server) -> None:
    import time

    from ctxcomp.errors import StoreUnavailable
    from ctxcomp.kv.store import open_store

    store = open_store(redis_server.url, timeout_s=0.3, retry_after_s=0.5)
    assert store.get("ab12") is None
    for outage, resume in ((redis_server.freeze, redis_server.thaw), (redis_server.kill, redis_server.start)):
        outage()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"KV store \(redis\)"):
            store.get("ab12")
        assert time.monotonic() - started < 1.5  # the timeout, not redis-py's 5 s default and retries
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="not retried"):
            store.put("ab12", b"x")  # the breaker is open: no second wait
        assert time.monotonic() - started < 0.05
        resume()
        time.sleep(0.6)
        store.put("ab12", b"x")
        assert store.get("ab12") == b"x"
        store.delete("ab12")


def test_generate_from_blob_answers_with_the_tokens_of_a_full_prefill(client, llm) -> None:
    """The README's KV recipe: a served blob, the LLM's chat template, greedy generation."""
    from ctxcomp.kv.handoff import generate_from_blob, rag_prompt_ids

    docs = ["The Vasa was a Swedish warship that sank on her maiden voyage in 1628.", "She was raised in 1961."]
    question = "When did the Vasa sink?"
    result, data = client.compress_with_kv(question, docs, rate=0.8, kv_codec="fp16")
    answer = generate_from_blob(llm, data, result.context, question, max_new_tokens=12)
    context_ids, question_ids = rag_prompt_ids(llm, result.context, question)
    full = torch.tensor([context_ids + question_ids])
    with torch.inference_mode():
        want = llm.model.generate(full, attention_mask=torch.ones_like(full), max_new_tokens=12, do_sample=False)
    assert answer == llm.tokenizer.decode(want[0, full.shape[1]:], skip_special_tokens=True).strip()
    assert answer and "<|im_end|>" not in answer
    with pytest.raises(blob.BlobRefused, match="not this context"):
        generate_from_blob(llm, data, "Another context entirely.", question)
