"""The one-pass sweep against a naive per-threshold loop, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import is_calibration_id, metrics_from_confusion
from wsss_bench.metrics.sweep import SweepEvaluator


def naive_confusions(images, C, T):
    """Independent reference: for every threshold build the hard pseudo label and count pixels."""
    out = np.zeros((T, C, C), dtype=np.int64)
    for scores, classes, gt in images:
        classes = np.asarray(classes)
        order = np.argsort(classes, kind="stable")
        classes, scores = classes[order], scores[order]
        if len(classes):
            m = np.clip(scores.max(0), 0.0, 1.0).astype(np.float32)
            k = np.zeros(gt.shape, dtype=np.int64)
            best = np.full(gt.shape, -np.inf, dtype=np.float32)
            for i in range(len(classes)):  # first maximal map wins a tie
                better = scores[i] > best
                best = np.where(better, scores[i], best)
                k = np.where(better, classes[i], k)
            q = np.floor(m * np.float32(T)).astype(np.int64)
        else:
            q = np.zeros(gt.shape, dtype=np.int64)
            k = np.zeros(gt.shape, dtype=np.int64)
        for j in range(T):
            label = np.where(q >= j, k, 0)
            for g, p in zip(gt.reshape(-1), label.reshape(-1), strict=True):
                if g != 255:
                    out[j, g, p] += 1
    return out


def random_images(rng, n, C, size=(7, 9), with_ties=True):
    images = []
    for _ in range(n):
        K = rng.integers(0, 4)
        classes = rng.choice(np.arange(1, C), size=K, replace=False)
        scores = rng.random((K, *size)).astype(np.float32)
        if with_ties and K:
            scores[:, 0, :3] = 0.0  # exactly 0
            scores[:, 1, :3] = 1.0  # exactly 1 (a tie across all maps)
            scores[:, 2, 0] = 0.37  # a tie inside the range
            scores[0, 3, :2] = 1.3  # above 1: clamped
            scores[:, 4, 4] = np.float32(0.5)  # on a threshold boundary
        gt = rng.integers(0, C, size=size).astype(np.uint8)
        gt[rng.random(size) < 0.15] = 255
        images.append((scores, classes, gt))
    return images


@pytest.mark.parametrize("T", [100, 7])
def test_sweep_equals_naive_loop_bit_for_bit(T):
    rng = np.random.default_rng(0)
    C = 6
    images = random_images(rng, 12, C)
    ev = SweepEvaluator(C, num_thresholds=T)
    for i, (s, c, g) in enumerate(images):
        ev.update(torch.from_numpy(s), c, torch.from_numpy(g), image_id=f"img{i}")
    ref = naive_confusions(images, C, T)
    got = ev.confusions("all").numpy()
    np.testing.assert_array_equal(got, ref)
    for j in (0, T // 3, T - 1):
        np.testing.assert_array_equal(ev.confusion(j).numpy(), ref[j])


def test_per_image_counts_sum_to_the_split_confusion():
    rng = np.random.default_rng(1)
    C = 5
    ev = SweepEvaluator(C)
    for i, (s, c, g) in enumerate(random_images(rng, 10, C)):
        ev.update(s, c, g, image_id=f"x{i}")
    for j in (0, 42, 99):
        pic = ev.per_image_counts(j)
        conf = ev.confusion(j).numpy()
        tp = np.diag(conf)
        np.testing.assert_array_equal(pic["tp"].sum(0), tp)
        np.testing.assert_array_equal(pic["fp"].sum(0), conf.sum(0) - tp)
        np.testing.assert_array_equal(pic["fn"].sum(0), conf.sum(1) - tp)


def test_calibration_split_follows_sha1_rule():
    ids = [f"2007_{i:06d}" for i in range(200)]
    cal = [i for i in ids if is_calibration_id(i)]
    assert 5 < len(cal) < 40  # about a tenth
    import hashlib

    assert all(int(hashlib.sha1(i.encode()).hexdigest(), 16) % 10 == 0 for i in cal)
    rng = np.random.default_rng(2)
    C = 4
    ev = SweepEvaluator(C)
    imgs = random_images(rng, len(ids), C, size=(4, 5), with_ties=False)
    for i, (s, c, g) in zip(ids, imgs, strict=True):
        ev.update(s, c, g, image_id=i)
    r = ev.results()
    assert r["calibrated"]["calibration_images"] == len(cal)
    assert r["calibrated"]["num_images"] == len(ids) - len(cal)
    # reference: threshold picked on the calibration images only, scored on the rest
    cal_set = set(cal)
    ref_cal = naive_confusions([x for i, x in zip(ids, imgs, strict=True) if i in cal_set], C, 100)
    ref_rest = naive_confusions([x for i, x in zip(ids, imgs, strict=True) if i not in cal_set], C, 100)
    cal_curve = [metrics_from_confusion(ref_cal[j])["miou"] for j in range(100)]
    jc = int(np.argmax([-1 if v is None else v for v in cal_curve]))
    assert r["calibrated"]["threshold"] == jc / 100
    assert r["calibrated"]["miou"] == pytest.approx(metrics_from_confusion(ref_rest[jc])["miou"], abs=0)


def test_best_threshold_and_native_threshold_read_the_curve():
    # one image, one class; hand-worked: scores 0.2 on the object, 0.1 elsewhere
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    s = np.array([[[0.2, 0.2, 0.1, 0.1]]], dtype=np.float32)
    ev = SweepEvaluator(2)
    ev.update(s, [1], gt, image_id="a")
    r = ev.results(native_threshold=0.5)
    # j <= 10: all foreground -> IoU_fg = 2/4, IoU_bg = 0 -> 0.25; 11..20: perfect -> 1.0; > 20: bg only
    assert r["sweep"]["miou"][10] == pytest.approx(0.25)
    assert r["sweep"]["miou"][11] == pytest.approx(1.0)
    assert r["sweep"]["miou"][20] == pytest.approx(1.0)
    assert r["sweep"]["miou"][21] == pytest.approx(0.25)  # bg IoU 2/4, fg 0/2 -> 0.25
    assert r["best_threshold"] == pytest.approx(0.11)
    assert r["native"]["miou"] == pytest.approx(0.25)
    assert len(r["sweep"]["thresholds"]) == 100


def test_bad_inputs_name_the_problem():
    ev = SweepEvaluator(3)
    g = np.zeros((2, 2), np.uint8)
    with pytest.raises(WsssBenchError, match="outside the class set"):
        ev.update(np.zeros((1, 2, 2)), [1], np.full((2, 2), 7, np.uint8), name="m.png")
    with pytest.raises(WsssBenchError, match="differs"):
        ev.update(np.zeros((1, 3, 2)), [1], g)
    with pytest.raises(WsssBenchError, match="foreground"):
        ev.update(np.zeros((1, 2, 2)), [3], g)
    with pytest.raises(WsssBenchError, match="NaN"):
        ev.update(np.full((1, 2, 2), np.nan), [1], g)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 8))
def test_merging_halves_equals_evaluating_the_whole(seed, split):
    rng = np.random.default_rng(seed)
    C = 5
    imgs = random_images(rng, 8, C, size=(5, 6))
    whole, a, b = SweepEvaluator(C), SweepEvaluator(C), SweepEvaluator(C)
    for i, (s, c, g) in enumerate(imgs):
        whole.update(s, c, g, image_id=str(i))
        (a if i < split else b).update(s, c, g, image_id=str(i))
    a.merge(b)
    assert torch.equal(a.hist, whole.hist)
    np.testing.assert_array_equal(a.per_image_counts(30)["tp"], whole.per_image_counts(30)["tp"])
    assert a.results() == whole.results()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_sweep_on_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    C = 6
    imgs = random_images(rng, 6, C)
    cpu, gpu = SweepEvaluator(C), SweepEvaluator(C, device="cuda")
    for i, (s, c, g) in enumerate(imgs):
        cpu.update(s, c, g, image_id=str(i))
        gpu.update(torch.from_numpy(s).cuda(), c, torch.from_numpy(g).cuda(), image_id=str(i))
    assert torch.equal(cpu.hist, gpu.hist.cpu())
