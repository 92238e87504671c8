"""SQuAD answer metrics (the official normalisation), shared by the quality benchmarks."""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_and_f1(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, token F1), each the max over the gold answers."""
    best_em, best_f1 = 0.0, 0.0
    pred = normalize(prediction).split()
    for answer in answers:
        gold = normalize(answer).split()
        best_em = max(best_em, float(pred == gold))
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return best_em, best_f1
