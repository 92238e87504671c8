"""Deterministic generation with the downstream LLM (summaries, benchmark answers).

Greedy decoding only: the same request gives the same text on every run and
machine, which the faithfulness guard and the benchmarks rely on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_ids(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> list[int]:
    """Token ids of a one-turn chat, ending where the assistant's reply starts."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], max_new_tokens: int, *, batch_size: int = 8) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens
    (the prompts' input embeddings through greedy_embeds: the same computation)."""
    if max_new_tokens <= 0:
        return ["" for _ in prompts]
    embed = model.get_input_embeddings()
    embedded = [embed(torch.tensor(ids, dtype=torch.long, device=embed.weight.device)) for ids in prompts]
    return greedy_embeds(model, tokenizer, embedded, max_new_tokens, batch_size=batch_size)


@torch.inference_mode()
def greedy_embeds(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[torch.Tensor], max_new_tokens: int, *, batch_size: int = 8
) -> list[str]:
    """Greedy continuations of prompts given as input embeddings ([T_i, H] each, e.g. with
    soft tokens spliced in); left-padded with zeros under a zero attention mask.

    Prompts run `batch_size` at a time, sorted by length so a batch wastes little
    padding; results come back in the input order, without special tokens.
    """
    if max_new_tokens <= 0:
        return ["" for _ in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for at in range(0, len(order), batch_size):
        picked = order[at : at + batch_size]
        width = max(len(prompts[i]) for i in picked)
        hidden = prompts[picked[0]].shape[1]
        device = model.get_input_embeddings().weight.device
        embeds = torch.zeros(len(picked), width, hidden, dtype=prompts[picked[0]].dtype, device=device)  # [B, T, H]
        mask = torch.zeros(len(picked), width, dtype=torch.long, device=device)
        for row, i in enumerate(picked):
            embeds[row, width - len(prompts[i]) :] = prompts[i].to(device)
            mask[row, width - len(prompts[i]) :] = 1
        generated = model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            num_beams=1, pad_token_id=pad_id,
        )
        for row, i in enumerate(picked):  # with inputs_embeds, generate returns only the new tokens
            out[i] = tokenizer.decode(generated[row], skip_special_tokens=True).strip()
    return out
