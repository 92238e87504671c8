"""xRAG (Cheng et al., 2024): each document becomes one soft token for the downstream LLM.

Stages: embed (the sentence encoder, as the retriever would) -> project (the
trained MLP into the LLM's input-embedding space) -> return one vector per
document as soft tokens. The client puts one "<xRAG>" placeholder per document
into its prompt and builds inputs_embeds with ctxcomp.soft.inputs_embeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import torch

from ctxcomp.errors import ModelUnavailable
from ctxcomp.hub import ModelHub
from ctxcomp.methods import MethodOutput, SelectiveOptions
from ctxcomp.soft import SoftTokens
from ctxcomp.types import CompressRequest, DocumentResult


@dataclass(frozen=True)
class XragConfig(SelectiveOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata={"help": "dtype of the returned vectors"}
    )


class Xrag:
    name: ClassVar[str] = "xrag"
    description: ClassVar[str] = "xRAG projection: one soft token per document, for the downstream LLM's inputs_embeds"
    config_type: ClassVar[type] = XragConfig
    requires: ClassVar[tuple[str, ...]] = ("sentence_encoder", "xrag_projector", "downstream_llm")
    needs_query: ClassVar[bool] = False
    output: ClassVar[str] = "soft"
    presets: ClassVar[dict[str, XragConfig]] = {"default": XragConfig()}

    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    def compress(self, request: CompressRequest, config: XragConfig, tokens_before: Sequence[int]) -> MethodOutput:
        llm = self.hub.llm()
        loaded = self.hub.xrag_projector()
        if loaded.llm_fingerprint != llm.fingerprint:
            raise ModelUnavailable(
                "xrag_projector",
                [f"projector trained for {loaded.meta.get('llm')} (fingerprint {loaded.llm_fingerprint[:12]}), "
                 f"server LLM is {llm.path.name} (fingerprint {llm.fingerprint[:12]})"],
                "train a projector for this LLM: python -m ctxcomp.models.train_xrag_projector",
            )
        vectors = project(self.hub, [d.text for d in request.documents]).to(getattr(torch, config.dtype))
        soft = SoftTokens("xrag", vectors, llm.fingerprint, llm.path.name, tuple(d.id for d in request.documents))
        documents = tuple(
            DocumentResult(id=d.id, text="", kept_spans=(), tokens_before=before, tokens_after=1, score=0.0,
                           metadata=dict(d.metadata))
            for d, before in zip(request.documents, tokens_before)
        )
        note = "one xRAG soft token per document (soft_tokens); put one <xRAG> placeholder per document in the prompt"
        return MethodOutput(documents, note, soft)


@torch.inference_mode()
def project(hub: ModelHub, texts: list[str]) -> torch.Tensor:
    """[N, llm_dim] float32 xRAG tokens of texts."""
    encoded = hub.sentence_encoder().encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
    return hub.xrag_projector().projector(torch.from_numpy(encoded)).float()
