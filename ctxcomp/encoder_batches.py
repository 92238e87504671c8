"""Length-sorted, dynamically padded encoder batches, shared by every encoder pass."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PAD_MULTIPLE = 32  # batch widths are rounded up to this: few distinct shapes for the kernel caches


def padded_width(lengths: Sequence[int]) -> int:
    """The longest length rounded up to PAD_MULTIPLE: oneDNN keeps one primitive per
    distinct shape, and unrounded widths made a long-running server's memory creep up."""
    return -(-max(lengths) // PAD_MULTIPLE) * PAD_MULTIPLE


def batches_by_length(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped so that each padded batch holds at most max_tokens ids.

    Sorting by length first keeps padding small (the reference pads every chunk to 512).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > max_tokens:  # ascending: the newest is the longest
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_rows(rows: Sequence[Sequence[int]], fill: int, width: int) -> torch.Tensor:
    """[B, width] long tensor: each row's values from the left, `fill` after them (built in
    numpy: a torch copy per row cost ~10 us each, three calls per encoder batch)."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)
