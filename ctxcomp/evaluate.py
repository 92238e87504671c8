"""SQuAD answer metrics (the official normalisation) and bootstrap intervals, shared by the
quality benchmarks and the tuning scripts."""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


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


def bootstrap_interval(values: Sequence[float], counts: Sequence[float] | None = None, *,
                       resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of a mean (a share when the values are 0/1).

    With `counts`, each value is a cluster's total over counts[i] items (the hits
    among one paragraph's questions, say): clusters are resampled whole and the
    statistic is sum(values) / sum(counts), so correlated items are not counted
    as independent."""
    arr = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(arr) if counts is None else np.asarray(counts, dtype=np.float64)
    if arr.size == 0 or arr.shape != weights.shape:
        raise ValueError("need one count per value and at least one value")
    picks = np.random.default_rng(seed).integers(0, arr.size, (resamples, arr.size))
    means = arr[picks].sum(1) / np.maximum(weights[picks].sum(1), 1e-12)
    return round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)


def separated(a: tuple[float, float], b: tuple[float, float]) -> int:
    """1 when interval a lies wholly above b, -1 wholly below, 0 when they overlap:
    a method is called better only when its interval clears the other's."""
    return 1 if a[0] > b[1] else -1 if a[1] < b[0] else 0
