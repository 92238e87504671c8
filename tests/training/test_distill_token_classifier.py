from __future__ import annotations

import argparse
import json

import pytest
import torch

from ctxcomp.models import registry
from training import distill_token_classifier as distill


def test_student_keeps_the_first_layers_and_the_head(hub) -> None:
    teacher = hub.get("token_classifier", "fp32").model
    student = distill.student_of(teacher, 2)
    assert len(student.base_model.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert len(teacher.base_model.encoder.layer) == 6  # the teacher is not cut


@pytest.mark.parametrize("soft_loss", ["ce", "margin"])
def test_distillation_loss_is_lowest_near_the_teacher(soft_loss) -> None:
    labels = torch.tensor([[1, 0, -100]])  # the last token (a special one) counts for nothing
    teacher_margin = torch.logit(torch.tensor([[0.9, 0.2, 0.5]]))
    weight = torch.tensor([1.0, 1.0])

    def loss(p_keep: list[float]) -> float:
        p = torch.tensor([p_keep + [0.01]])
        logits = torch.stack([torch.log(1 - p), torch.log(p)], -1)
        return distill.distillation_loss(logits, labels, teacher_margin, weight, 1.0, soft_loss).item()

    assert loss([0.9, 0.2]) < loss([0.6, 0.4])
    assert loss([0.9, 0.2]) < loss([0.999, 0.001])  # the teacher's term outweighs the hard labels' pull to the extremes


def test_a_short_distillation_saves_a_delta_the_registry_loads(tmp_path) -> None:
    args = argparse.Namespace(layers=1, epochs=1, lr=1e-4, distill_weight=1.0, soft_loss="margin", batch_size=8, max_length=128,
                              threads=2, limit=9, out=str(tmp_path))
    meta = distill.train(args)
    model = registry.load_distilled_token_classifier(tmp_path)
    assert model.config.num_hidden_layers == 1
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layers"] == 1 and saved["epochs"] == 1 and saved["dev"] == meta["dev"]
