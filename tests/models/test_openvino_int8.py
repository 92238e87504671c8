"""Static int8's pieces: smoothing, activation ranges, weights, and the shipped calibration sample."""

from __future__ import annotations


import numpy as np

from ctxcomp.models import openvino_int8, registry
from training import calibration_texts, squad


def statistics(low: list[list[float]], high: list[list[float]]) -> openvino_int8.InputStatistics:
    return openvino_int8.InputStatistics(np.asarray(low, np.float32), np.asarray(high, np.float32))


def test_smoothing_moves_a_wide_channel_into_the_weights_shared_by_its_readers() -> None:
    stats = statistics([[-1.0, -50.0], [-0.5, -10.0]], [[1.0, 40.0], [0.5, 20.0]])
    narrow, wide = np.ones((3, 2)), np.ones((3, 2))
    wide[:, 0] = 4.0  # a second reader of the same input with a larger weight in channel 0
    alone = openvino_int8.smoothing(stats, [narrow], alpha=0.5)
    shared = openvino_int8.smoothing(stats, [narrow, wide], alpha=0.5)
    assert alone[1] > alone[0]  # the outlier channel is divided the most
    np.testing.assert_allclose(alone, [1.0, np.sqrt(50.0)], rtol=1e-6)
    np.testing.assert_allclose(shared, [np.sqrt(1.0 / 4.0), np.sqrt(50.0)], rtol=1e-6)  # max |w| over both readers


def test_activation_range_is_the_mean_of_each_inputs_extremes_and_holds_zero() -> None:
    stats = statistics([[-2.0, 1.0], [-4.0, 3.0]], [[6.0, 2.0], [8.0, 3.0]])
    low, high = openvino_int8.activation_range(stats, np.ones(2, np.float32))
    assert (low, high) == (-3.0, 7.0)  # one input's -4 / 8 does not set the range alone
    positive = statistics([[1.0], [2.0]], [[3.0], [5.0]])
    assert openvino_int8.activation_range(positive, np.ones(1, np.float32)) == (0.0, 4.0)
    low, high = openvino_int8.activation_range(stats, np.asarray([2.0, 1.0], np.float32))
    assert (low, high) == (-1.5, 3.5)  # ranges are of the smoothed input


def test_quantized_weight_is_within_half_a_step_per_row() -> None:
    weight = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    weight[3] *= 100.0  # a wide row does not coarsen the others
    codes, scale = openvino_int8.quantized_weight(weight)
    assert codes.dtype == np.int8 and scale.shape == (8, 1)
    assert np.all(np.abs(codes.astype(np.float32) * scale - weight) <= scale / 2 + 1e-6)


def test_the_calibration_sample_is_from_train_articles_only_and_pairs_each_passage() -> None:
    shipped = registry.calibration_samples()
    splits = squad.splits()
    train = {p.context for p in splits.train}
    assert shipped == calibration_texts.sample(splits.train, len(shipped))  # the script's output, unedited
    assert all(s["text"] in train for s in shipped) and all(s["question"] for s in shipped)
    held_out = {p.context for p in splits.dev + splits.test}
    assert not held_out & {s["text"] for s in shipped}
