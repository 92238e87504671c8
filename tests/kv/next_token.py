"""What a KV test compares: the LLM's next-token logits after a question, from a full prefill or a blob."""

from __future__ import annotations

from typing import Any

import torch


def next_token_logits(llm: Any, context_ids: torch.Tensor, question: str, data: bytes | None) -> torch.Tensor:
    """Logits after `question` (as the KV benches ask it) that follows context_ids [1, S]: from a full
    prefill of both (data None), or from the context's blob `data` and only the question."""
    from ctxcomp.kv.handoff import cache_from_blob

    qids = llm.tokenizer(f"\nQuestion: {question}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        if data is None:
            return llm.model(torch.cat([context_ids, qids], 1)).logits[0, -1]
        cache, _ = cache_from_blob(data, llm)
        positions = torch.arange(context_ids.shape[1], context_ids.shape[1] + qids.shape[1])[None]
        return llm.model(qids, past_key_values=cache, position_ids=positions).logits[0, -1]
