"""The xRAG projector: one sentence-encoder embedding -> one LLM input embedding.

xRAG (Cheng et al., 2024) feeds a retrieved document to a frozen LLM as a
single "xRAG token": the retriever's embedding of the document, mapped into
the LLM's input-embedding space by a 2-layer MLP with GELU. Only that MLP is
trained (`train_xrag_projector.py`); encoder and LLM stay frozen.

Prompt templates live here because training and serving must use the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

PROJECTOR_DIR = Path(__file__).resolve().parent / "xrag_projector"
PLACEHOLDER = "<xRAG>"
# Stage 1 (paraphrase pretraining) and stage 2 / inference (QA) templates.
PARAPHRASE_TEMPLATE = "Background: <xRAG>\nThe background above, written out in full: "
QA_TEMPLATE = "Background: <xRAG>\nQuestion: {question}\nAnswer:"


class Projector(nn.Module):
    """[N, encoder_dim] -> [N, llm_dim]: Linear, GELU, Linear (as in the paper)."""

    def __init__(self, encoder_dim: int = 384, llm_dim: int = 576, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(encoder_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class LoadedProjector:
    projector: Projector  # eval mode, fp32
    meta: dict[str, Any]  # config.json: dims, the LLM it was trained for, training figures

    @property
    def llm_fingerprint(self) -> str:
        return str(self.meta.get("llm_fingerprint", ""))


def save(projector: Projector, meta: dict[str, Any], folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in projector.state_dict().items()}, folder / "projector.safetensors")
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(folder: Path = PROJECTOR_DIR) -> LoadedProjector:
    from safetensors.torch import load_file

    meta = json.loads((folder / "config.json").read_text())
    projector = Projector(meta["encoder_dim"], meta["llm_dim"], meta["hidden"])
    projector.load_state_dict({k: v.float() for k, v in load_file(folder / "projector.safetensors").items()})
    projector.eval()
    return LoadedProjector(projector, meta)
