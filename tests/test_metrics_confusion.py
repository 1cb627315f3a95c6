"""Hard-mask confusion against torchmetrics, every metric on a hand-computed case, and predictions
with "no label" (255) under both conventions against independent references."""

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
    np.testing.assert_array_equal(ev.confusion, tm.compute().numpy())


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
    with pytest.raises(WsssBenchError, match="p.png: predicted value 21"):
        ev.update(np.full((3, 3), 21, np.uint8), gt, name="p.png")
    with pytest.raises(WsssBenchError, match="predicted value 255 .*no label"):
        ev.update(np.full((3, 3), 255, np.uint8), gt)
    with pytest.raises(WsssBenchError, match="prediction value -1 is outside"):
        ev.update(np.full((3, 3), -1), gt)
    with pytest.raises(WsssBenchError, match="integer"):
        ev.update(np.zeros((3, 3), np.float32), gt)
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
    np.testing.assert_array_equal(a.state(), whole.state())
    for k in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(a.per_image_counts()[k], whole.per_image_counts()[k])


def naive_counts(pairs, C, mode):
    """Reference: per-class TP/FP/FN by a pixel loop, for unlabelled mode None, 'fn' or 'exclude'."""
    tp, fp, fn = (np.zeros(C, np.int64) for _ in range(3))
    unl = counted = 0
    for pred, gt in pairs:
        for g, p in zip(gt.reshape(-1).tolist(), pred.reshape(-1).tolist(), strict=True):
            if g == 255:
                continue
            if p == 255:
                if mode == "exclude":
                    unl += 1
                    counted += 1
                    continue
                fn[g] += 1  # 'fn': neither TP nor FP of any class, a miss of its gt class
                unl += 1
                counted += 1
                continue
            counted += 1
            if p == g:
                tp[g] += 1
            else:
                fp[p] += 1
                fn[g] += 1
    return tp, fp, fn, unl, counted


def more_pseudo_scores_miou(pairs, C):
    """MoRe's utils/evaluate.py pseudo_scores (read from the repository): 255 predictions dropped."""
    hist = np.zeros((C, C))
    for lt, lp in pairs:
        lt = lt.astype(np.int64).flatten()
        lp = lp.astype(np.int64).flatten()
        lt[lp == 255] = 255
        lp[lp == 255] = 0
        mask = (lt >= 0) & (lt < C)
        hist += np.bincount(C * lt[mask].astype(int) + lp[mask], minlength=C ** 2).reshape(C, C)
    iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    return np.nanmean(iu[valid])


@pytest.mark.parametrize("mode", ["fn", "exclude"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_unlabelled_predictions_follow_the_chosen_convention(mode, backend):
    rng = np.random.default_rng(3)
    C = 5
    pairs = []
    ev = ConfusionEvaluator(C, unlabelled=mode, backend=backend)
    for i in range(4):
        gt = rng.integers(0, C, size=(9, 11)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, C, size=gt.shape).astype(np.uint8)
        pred[rng.random(gt.shape) < 0.3] = 255
        pairs.append((pred, gt))
        ev.update(pred, gt, image_id=str(i))
    tp, fp, fn, unl, counted = naive_counts(pairs, C, mode)
    m = ev.metrics()
    assert m["coverage"] == (counted - unl) / counted and m["unlabelled_pixels"] == unl
    iou = tp / (tp + fp + fn)
    assert m["iou"] == pytest.approx(iou.tolist(), abs=0)
    assert m["num_pixels"] == (counted if mode == "fn" else counted - unl)
    pic = ev.per_image_counts()
    np.testing.assert_array_equal(pic["tp"].sum(0), tp)
    np.testing.assert_array_equal(pic["fp"].sum(0), fp)
    np.testing.assert_array_equal(pic["fn"].sum(0), fn)
    if mode == "exclude":
        assert m["miou"] == pytest.approx(more_pseudo_scores_miou(pairs, C), abs=1e-15)


def test_torch_backend_equals_numpy_and_hist_is_a_shared_view():
    rng = np.random.default_rng(9)
    a, b = ConfusionEvaluator(7), ConfusionEvaluator(7, backend="torch")
    for i in range(3):
        gt = rng.integers(0, 7, size=(6, 5)).astype(np.uint8)
        gt[0] = 255
        pred = rng.integers(0, 7, size=gt.shape)
        a.update(pred, gt, str(i))
        b.update(torch.from_numpy(pred), torch.from_numpy(gt), str(i))
    np.testing.assert_array_equal(a.state(), b.state())
    assert a.metrics() == b.metrics()
    a.hist.add_(1)
    assert int(a.state().min()) >= 1
