"""xRAG (Cheng et al., 2024): each document becomes one soft token for the downstream LLM.

Stages: embed (the sentence encoder, as the retriever would) -> project (the
trained MLP into the LLM's input-embedding space) -> return one vector per
document as soft tokens. The client puts one "<xRAG>" placeholder per document
into its prompt and builds inputs_embeds with ctxcomp.soft.inputs_embeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from ctxcomp.embedding import embed
from ctxcomp.errors import ModelUnavailable
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodBase, MethodItem, MethodOutput, Output, SelectiveOptions
from ctxcomp.selection import empty_results
from ctxcomp.soft import SoftTokens


@dataclass(frozen=True)
class XragConfig(SelectiveOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata={"help": "dtype of the returned vectors"}
    )


class Xrag(MethodBase):
    name: ClassVar[str] = "xrag"
    description: ClassVar[str] = "xRAG projection: one soft token per document, for the downstream LLM's inputs_embeds"
    requires: ClassVar[tuple[str, ...]] = ("sentence_encoder", "xrag_projector", "downstream_llm")
    needs_query: ClassVar[bool] = False
    output: ClassVar[Output] = "vectors"
    presets: ClassVar[dict[str, XragConfig]] = {"default": XragConfig()}

    def compress(self, item: MethodItem) -> MethodOutput:
        request, config = item.request, item.config
        llm = self.hub.llm()
        loaded = self.hub.xrag_projector()
        if loaded.llm_fingerprint != llm.fingerprint:
            raise ModelUnavailable(
                "xrag_projector",
                [f"projector trained for {loaded.meta.get('llm')} (fingerprint {loaded.llm_fingerprint[:12]}), "
                 f"server LLM is {llm.path.name} (fingerprint {llm.fingerprint[:12]})"],
                "train a projector for this LLM: python -m training.train_xrag_projector",
            )
        vectors = project(self.hub, [d.text for d in request.documents]).to(getattr(torch, config.dtype))
        soft = SoftTokens("xrag", vectors, llm.fingerprint, llm.path.name, tuple(d.id for d in request.documents))
        n = len(request.documents)
        documents = empty_results(request, item.tokens_before, [1] * n, [0.0] * n)
        note = "one xRAG soft token per document (soft_tokens); put one <xRAG> placeholder per document in the prompt"
        return MethodOutput(documents, note, soft)


@torch.inference_mode()
def project(hub: ModelHub, texts: list[str]) -> torch.Tensor:
    """[N, llm_dim] float32 xRAG tokens of texts."""
    encoded = embed(hub, texts)
    return hub.xrag_projector().projector(torch.from_numpy(encoded)).float()
