from __future__ import annotations

import torch

from training.train_token_classifier import padded_rows


def test_padded_rows_fill_after_each_rows_values_in_the_fills_dtype() -> None:
    labels = padded_rows([torch.tensor([1, 0]), torch.tensor([0, 1, 1])], torch.Size([2, 4]), -100)
    assert labels.dtype == torch.long
    assert labels.tolist() == [[1, 0, -100, -100], [0, 1, 1, -100]]
    targets = padded_rows([torch.tensor([0.5])], torch.Size([1, 3]), 0.0)
    assert targets.dtype == torch.float32 and targets.tolist() == [[0.5, 0.0, 0.0]]
