"""Hard-mask confusion against torchmetrics, and every metric on a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassConfusionMatrix

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.functional import metrics_from_confusion


def test_confusion_equals_torchmetrics_with_ignore_index():
    rng = np.random.default_rng(0)
    C = 21
    ev = ConfusionEvaluator(C)
    tm = MulticlassConfusionMatrix(num_classes=C, ignore_index=255)
    for i in range(5):
        gt = rng.integers(0, C, size=(37, 41)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, C, size=gt.shape).astype(np.uint8)
        ev.update(pred, gt, image_id=str(i))
        tm.update(torch.from_numpy(pred).long().reshape(-1), torch.from_numpy(gt).long().reshape(-1))
    np.testing.assert_array_equal(ev.confusion.numpy(), tm.compute().numpy())


def test_every_metric_on_a_hand_computed_case():
    # rows = gt, cols = pred
    conf = np.array([[5, 1, 0],
                     [2, 3, 0],
                     [0, 0, 0]])
    m = metrics_from_confusion(conf)
    # class 0: TP 5, FP 2, FN 1 -> IoU 5/8; class 1: TP 3, FP 1, FN 2 -> IoU 3/6; class 2 undefined
    assert m["iou"] == [pytest.approx(5 / 8), pytest.approx(3 / 6), None]
    assert m["miou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert m["num_valid_classes"] == 2
    assert m["precision"] == [pytest.approx(5 / 7), pytest.approx(3 / 4), None]
    assert m["recall"] == [pytest.approx(5 / 6), pytest.approx(3 / 5), None]
    assert m["fp_ratio"] == [pytest.approx(2 / 8), pytest.approx(1 / 6), None]
    assert m["fn_ratio"] == [pytest.approx(1 / 8), pytest.approx(2 / 6), None]
    assert m["pixel_accuracy"] == pytest.approx(8 / 11)
    assert m["fw_iou"] == pytest.approx(6 / 11 * 5 / 8 + 5 / 11 * 3 / 6)
    for c in range(2):  # IoU + FP ratio + FN ratio = 1
        assert m["iou"][c] + m["fp_ratio"][c] + m["fn_ratio"][c] == pytest.approx(1.0)


def test_class_absent_from_gt_but_predicted_counts_as_zero():
    conf = np.array([[4, 1], [0, 0]])
    m = metrics_from_confusion(conf)
    assert m["iou"] == [pytest.approx(4 / 5), 0.0]
    assert m["miou"] == pytest.approx(0.4)


def test_out_of_range_values_are_named():
    ev = ConfusionEvaluator(21)
    gt = np.zeros((3, 3), np.uint8)
    with pytest.raises(WsssBenchError, match="predicted value 21"):
        ev.update(np.full((3, 3), 21, np.uint8), gt, name="p.png")
    bad = gt.copy()
    bad[1, 1] = 30
    with pytest.raises(WsssBenchError, match="ground-truth value 30"):
        ev.update(gt, bad)
    with pytest.raises(WsssBenchError, match="shape"):
        ev.update(np.zeros((2, 3), np.uint8), gt)
    ev.update(gt, np.full((3, 3), 255, np.uint8))  # ignore is fine
    assert ev.confusion.sum() == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 6))
def test_merge_of_halves_equals_whole(seed, split):
    rng = np.random.default_rng(seed)
    whole, a, b = ConfusionEvaluator(4), ConfusionEvaluator(4), ConfusionEvaluator(4)
    for i in range(6):
        gt = rng.integers(0, 4, size=(4, 4)).astype(np.uint8)
        gt[0, 0] = 255
        pred = rng.integers(0, 4, size=(4, 4))
        whole.update(pred, gt, str(i))
        (a if i < split else b).update(pred, gt, str(i))
    a.merge(b)
    assert torch.equal(a.confusion, whole.confusion)
    for k in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(a.per_image_counts()[k], whole.per_image_counts()[k])
