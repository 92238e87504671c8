"""Soft tokens: vectors (not text) that go into the downstream LLM as input embeddings.

xRAG returns one vector per document, COMI merged slots of token embeddings.
Both travel as safetensors bytes carrying shape, dtype, the fingerprint of the
LLM they were made for and a SHA-256 of the tensor bytes; `decode` checks the
checksum, `inputs_embeds` refuses another model and a prompt whose placeholder
count differs from the number of vectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from ctxcomp.errors import CtxcompError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ctxcomp.models.registry import LoadedLLM

FORMAT = "ctxcomp-soft/1"
PLACEHOLDER = "<xRAG>"


class SoftTokensRefused(CtxcompError):
    """Soft tokens that cannot be used as asked: corrupt, for another model, or miscounted."""


@dataclass(frozen=True)
class SoftTokens:
    kind: str  # "xrag" (one vector per document) or "comi" (merged slots)
    vectors: torch.Tensor  # [N, H] in the LLM's input-embedding space
    model_fingerprint: str
    model_id: str
    document_ids: tuple[str, ...]  # [N] the document each row came from

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.document_ids):
            raise ValueError(f"vectors {tuple(self.vectors.shape)} need one row per document id ({len(self.document_ids)})")


def _digest(vectors: torch.Tensor) -> str:
    return hashlib.sha256(vectors.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def encode(soft: SoftTokens) -> bytes:
    from safetensors.torch import save

    vectors = soft.vectors.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "kind": soft.kind,
        "model_fingerprint": soft.model_fingerprint,
        "model_id": soft.model_id,
        "document_ids": json.dumps(list(soft.document_ids)),
        "shape": json.dumps(list(vectors.shape)),
        "dtype": str(vectors.dtype).removeprefix("torch."),
        "sha256": _digest(vectors),
    }
    return save({"vectors": vectors}, metadata=metadata)


def decode(data: bytes, expect_fingerprint: str | None = None) -> SoftTokens:
    """Parse and verify soft-token bytes; with expect_fingerprint, refuse other models' vectors."""
    from safetensors.torch import load

    try:
        vectors = load(data)["vectors"]
        meta = _header_metadata(data)
    except Exception as err:  # safetensors raises several types on bad bytes
        raise SoftTokensRefused(f"soft tokens unreadable: {err}") from err
    if meta.get("format") != FORMAT:
        raise SoftTokensRefused(f"soft tokens: format {meta.get('format')!r}, expected {FORMAT!r}")
    if _digest(vectors) != meta.get("sha256"):
        raise SoftTokensRefused("soft tokens: checksum mismatch (corrupted in transit?)")
    if expect_fingerprint is not None and meta["model_fingerprint"] != expect_fingerprint:
        raise SoftTokensRefused(
            f"soft tokens were made for model {meta['model_id']} (fingerprint {meta['model_fingerprint'][:12]}), "
            f"not for this one (fingerprint {expect_fingerprint[:12]})"
        )
    return SoftTokens(meta["kind"], vectors, meta["model_fingerprint"], meta["model_id"], tuple(json.loads(meta["document_ids"])))


def _header_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of safetensors bytes (an 8-byte little-endian length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > len(data) - 8:
        raise ValueError("bad safetensors header length")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def prompt_pieces(tokenizer: PreTrainedTokenizerBase, prompt: str, placeholder: str = PLACEHOLDER) -> list[list[int]]:
    """Token ids of the text between placeholders: one more piece than placeholders."""
    return [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in prompt.split(placeholder)]


def splice(embed_tokens: torch.nn.Module, pieces: Sequence[Sequence[int]], vectors: torch.Tensor) -> torch.Tensor:
    """[T, H]: the pieces' token embeddings with one vector ([N, H], N = len(pieces) - 1) between each."""
    if vectors.shape[0] != len(pieces) - 1:
        raise SoftTokensRefused(
            f"the prompt has {len(pieces) - 1} placeholder(s) but {vectors.shape[0]} soft token(s) were given"
        )
    weight = embed_tokens.weight
    parts = []
    for i, ids in enumerate(pieces):
        if ids:
            parts.append(embed_tokens(torch.tensor(ids, dtype=torch.long, device=weight.device)))
        if i < len(vectors):
            parts.append(vectors[i : i + 1].to(weight.dtype).to(weight.device))
    return torch.cat(parts, dim=0)


def inputs_embeds(llm: LoadedLLM, prompt: str, soft: SoftTokens, placeholder: str = PLACEHOLDER) -> torch.Tensor:
    """[1, T, H] inputs_embeds for llm (a ctxcomp LoadedLLM): `prompt` with each placeholder
    replaced by the next soft token, in order. Refuses soft tokens made for another model."""
    if soft.model_fingerprint != llm.fingerprint:
        raise SoftTokensRefused(
            f"soft tokens were made for model {soft.model_id} (fingerprint {soft.model_fingerprint[:12]}), "
            f"not for {llm.path.name} (fingerprint {llm.fingerprint[:12]})"
        )
    pieces = prompt_pieces(llm.tokenizer, prompt, placeholder)
    with torch.no_grad():
        return splice(llm.model.get_input_embeddings(), pieces, soft.vectors).unsqueeze(0)
