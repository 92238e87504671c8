"""From a prefill to blob bytes and back into a transformers cache for the same model."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from ctxcomp.errors import NotAvailable
from ctxcomp.kv import blob
from ctxcomp.kv.architectures import rope_theta_of
from ctxcomp.kv.prefill import PrefillResult, dynamic_cache

if TYPE_CHECKING:
    from transformers import DynamicCache

    from ctxcomp.models.kv_transform import KvTransform
    from ctxcomp.models.registry import LoadedLLM


@functools.lru_cache(maxsize=1)
def default_kv_transform() -> KvTransform:
    """The shipped (or CTXCOMP_KV_TRANSFORM) transform for library calls without a hub, loaded
    once: its inverse matrices are computed on first use and are costly to redo per blob."""
    from ctxcomp import models

    return models.load_kv_transform()


def kv_transform_for(llm: LoadedLLM, transform: KvTransform | None = None) -> KvTransform | None:
    """The "transform" codec's KvTransform checked against this LLM (default: the shipped one,
    loaded here; a server passes its hub's, so CTXCOMP_KV_TRANSFORM and hub overrides apply).
    NotAvailable when it was calibrated for another LLM."""
    if transform is None:
        transform = default_kv_transform()
    if transform.llm_fingerprint != llm.fingerprint:
        raise NotAvailable(
            f"the KV transform was calibrated for {transform.meta.get('llm_id', '?')} (fingerprint "
            f"{transform.llm_fingerprint[:12]}), not for this LLM ({llm.fingerprint[:12]}); run "
            "`python -m training.calibrate_kv_transform` and set CTXCOMP_KV_TRANSFORM"
        )
    return transform


def blob_from_prefill(
    result: PrefillResult,
    llm: LoadedLLM,
    token_ids: Sequence[int],
    *,
    codec: blob.Codec = "fp16",
    zstd_level: int | None = None,
    transform: KvTransform | None = None,
) -> bytes:
    """llm: a ctxcomp.models.LoadedLLM (model, tokenizer, fingerprint); transform: the KvTransform
    of codecs "transform" and "headpca" (default: the shipped one). A prefill run with
    attention_queries hands its attention estimate to codecs that use it."""
    first = result.keys[0]
    meta = blob.BlobMeta(
        model_fingerprint=llm.fingerprint,
        model_id=llm.path.name,
        layers=len(result.keys),
        kv_heads=first.shape[-3],
        head_dim=first.shape[-1],
        tokens=first.shape[-2],
        token_ids_sha256=blob.token_ids_digest(token_ids),
        start_pos=result.start_pos,
        rope_theta=rope_theta_of(llm.model.config),
        **blob.rope_fields(result.rope),
    )
    needs = codec in blob.CODECS and blob.CODECS[codec].needs_transform
    checked = kv_transform_for(llm, transform) if needs else None
    return blob.encode(result.keys, result.values, meta, codec=codec, zstd_level=zstd_level, transform=checked,
                       attention=result.attention)


def cache_from_blob(data: bytes, llm: LoadedLLM, transform: KvTransform | None = None) -> tuple[DynamicCache, blob.BlobMeta]:
    """A DynamicCache for llm, on the device its weights are on, from blob bytes; refuses
    blobs of other models or corrupt ones."""
    keys, values, meta = blob.decode(
        data, expect_fingerprint=llm.fingerprint, transform=lambda: kv_transform_for(llm, transform)
    )
    device = next(llm.model.parameters()).device
    keys, values = keys.to(device), values.to(device)  # [L, H, S, D]
    cache = dynamic_cache([k.unsqueeze(0) for k in keys], [v.unsqueeze(0) for v in values])
    return cache, meta


RAG_INSTRUCTION = "Answer the question using the context above."


def rag_prompt_ids(llm: LoadedLLM, context: str, question: str, instruction: str = RAG_INSTRUCTION) -> tuple[list[int], list[int]]:
    """(context ids, ids after them) of a plain RAG prompt the blob can be the start of: the
    compressed context first (the blob's tokens, positions 0..n-1), then the LLM's own chat
    template around the question, ending where the assistant's answer starts. A blob holds the
    context alone, so the context cannot sit inside the template's user turn."""
    context_ids = llm.tokenizer(context, add_special_tokens=False)["input_ids"]
    turn = [{"role": "user", "content": f"{instruction}\n\nQuestion: {question}"}]
    text = llm.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    return context_ids, llm.tokenizer("\n\n" + text, add_special_tokens=False)["input_ids"]


def generate_from_blob(
    llm: LoadedLLM, data: bytes, context: str, question: str, *, max_new_tokens: int = 64,
    instruction: str = RAG_INSTRUCTION, transform: KvTransform | None = None,
) -> str:
    """The LLM's greedy answer to `question` over `context`, continuing from the context's KV
    blob (`data`, from a ctxcomp server or blob_from_prefill) instead of prefilling it: the
    tokens are those a full prefill of the same prompt gives. Refuses a blob of another model
    or of another text than `context`."""
    import torch

    cache, meta = cache_from_blob(data, llm, transform)
    context_ids, question_ids = rag_prompt_ids(llm, context, question, instruction)
    if blob.token_ids_digest(context_ids) != meta.token_ids_sha256 or meta.start_pos != 0:
        raise blob.BlobRefused("the blob is not this context's KV (its token ids differ): pass the context it was made for")
    device = next(llm.model.parameters()).device
    ids = torch.tensor([context_ids + question_ids], device=device)
    with torch.inference_mode():
        out = llm.model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=llm.tokenizer.pad_token_id or llm.tokenizer.eos_token_id)
    return llm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
