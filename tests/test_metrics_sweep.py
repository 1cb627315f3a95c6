"""The one-pass sweep (protocol version 2) against a naive per-threshold loop, bit for bit.

Changed from version 1: the rule is strict (foreground where m > float32(j / T), ties to the
background) where version 1 used floor(T m) >= j, and the native rule is an exact extra matrix
instead of the nearest grid threshold.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import is_calibration_id, metrics_from_confusion
from wsss_bench.metrics.rules import NativeRule, ThresholdBins, grid_thresholds, power_rule_threshold
from wsss_bench.metrics.sweep import SweepEvaluator

BACKENDS = ["numpy", "torch"]


def naive_labels(scores, classes, shape, t32):
    """Independent reference: the pseudo label at float32 threshold t32, pixel loop over maps."""
    classes = np.asarray(classes)
    if not len(classes):
        return np.zeros(shape, np.int64)
    order = np.argsort(classes, kind="stable")
    classes, scores = classes[order], np.asarray(scores)[order]
    best = np.full(shape, -np.inf, dtype=np.float32)
    k = np.zeros(shape, dtype=np.int64)
    for i in range(len(classes)):  # strictly greater: the first maximal map (lowest class) wins a tie
        better = scores[i] > best
        best = np.where(better, scores[i], best)
        k = np.where(better, classes[i], k)
    m = np.clip(best, 0.0, 1.0).astype(np.float32)
    return np.where(m > np.float32(t32), k, 0)


def naive_confusion(images, C, t32):
    out = np.zeros((C, C), dtype=np.int64)
    for scores, classes, gt in images:
        label = naive_labels(scores, classes, gt.shape, t32)
        for g, p in zip(gt.reshape(-1), label.reshape(-1), strict=True):
            if g != 255:
                out[g, p] += 1
    return out


def naive_confusions(images, C, T):
    return np.stack([naive_confusion(images, C, np.float32(j / T)) for j in range(T)])


def random_images(rng, n, C, size=(7, 9), with_ties=True, T=100):
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
            scores[0, 3, 2] = -0.2  # below 0: clamped
            scores[:, 4, 4] = np.float32(0.5)  # on a threshold
            scores[0, 5, :4] = np.float32(0.15)  # IRN's threshold, exactly
            scores[0, 6, :4] = [np.float32(j / T) for j in rng.integers(0, T, 4)]  # grid values
            scores[0, 6, 4] = power_rule_threshold(32.0)  # GETAM's equivalent threshold
            scores[0, 6, 5] = np.nextafter(power_rule_threshold(32.0), np.float32(1))
        gt = rng.integers(0, C, size=size).astype(np.uint8)
        gt[rng.random(size) < 0.15] = 255
        images.append((scores, classes, gt))
    return images


def feed(ev, images, prefix="img"):
    for i, (s, c, g) in enumerate(images):
        ev.update(s, c, g, image_id=f"{prefix}{i}")
    return ev


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [100, 7])
def test_sweep_equals_naive_loop_bit_for_bit(T, backend):
    rng = np.random.default_rng(0)
    C = 6
    images = random_images(rng, 12, C, T=T)
    ev = feed(SweepEvaluator(C, num_thresholds=T, backend=backend), images)
    ref = naive_confusions(images, C, T)
    np.testing.assert_array_equal(ev.confusions("all"), ref)
    for j in (0, T // 3, T - 1):
        np.testing.assert_array_equal(ev.confusion(j), ref[j])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", [("constant", 0.15), ("constant", 0.5), ("constant", 0.0),
                                  ("constant", 0.123456), ("power", 32.0), ("power", 4.0)])
def test_native_rule_is_exact_and_does_not_move_the_grid(rule, backend):
    rng = np.random.default_rng(1)
    C = 5
    images = random_images(rng, 10, C)
    ev = feed(SweepEvaluator(C, native_rule=rule, backend=backend), images)
    # the rule as the official code evaluates it, pixel by pixel
    ref = np.zeros((C, C), dtype=np.int64)
    for scores, classes, gt in images:
        lab = naive_labels(scores, classes, gt.shape, 2.0)  # 2.0: k only where needed below
        if len(classes):
            order = np.argsort(classes, kind="stable")
            s = scores[order]
            m = np.clip(s.max(0), 0, 1).astype(np.float32)
            k = np.asarray(classes)[order][np.argmax(s, axis=0)]
            if rule[0] == "power":
                fg = m > np.power(np.float32(1) - m, rule[1])
            else:
                fg = m > np.float32(rule[1])
            lab = np.where(fg, k, 0)
        for g, p in zip(gt.reshape(-1), lab.reshape(-1), strict=True):
            if g != 255:
                ref[g, p] += 1
    np.testing.assert_array_equal(ev.native_confusion(), ref)
    np.testing.assert_array_equal(ev.confusions(), naive_confusions(images, C, 100))
    nat = ev.results()["native"]
    assert nat["rule"] == rule[0] and nat["value"] == rule[1]
    assert nat["threshold"] == (rule[1] if rule[0] == "constant" else float(power_rule_threshold(rule[1])))
    assert nat["miou"] == metrics_from_confusion(ref)["miou"]
    assert "threshold_index" not in nat


def test_scores_equal_to_a_threshold_are_background():
    # m exactly float32(0.15) and float32(j / T): not above the threshold, so background
    gt = np.array([[1, 1, 1, 1]], np.uint8)
    s = np.array([[[np.float32(0.15), np.float32(0.5), np.nextafter(np.float32(0.15), np.float32(1)), 1.0]]],
                 np.float32)
    ev = SweepEvaluator(2, native_rule=0.15)
    ev.update(s, [1], gt, image_id="a")
    assert ev.confusion(15)[1].tolist() == [1, 3]  # only 0.15 itself is background at t = 0.15
    assert ev.confusion(50)[1].tolist() == [3, 1]  # all but 1.0 are background at t = 0.5 (0.5 itself too)
    assert ev.confusion(14)[1].tolist() == [0, 4]
    assert ev.native_confusion()[1].tolist() == [1, 3]
    ev99 = SweepEvaluator(2)
    ev99.update(np.full((1, 1, 4), np.float32(0.99)), [1], gt, image_id="b")
    assert ev99.confusion(99)[1].tolist() == [4, 0]


def test_threshold_bins_match_a_search_near_every_threshold():
    for T, native in ((100, None), (100, 0.15), (100, float(power_rule_threshold(32.0))), (7, 0.3), (1000, 0.0005),
                      (3, 1.0), (10, 0.0)):
        b = ThresholdBins(T, None if native is None else np.float32(native))
        U = b.merged
        bits = U.view(np.int32).astype(np.int64)[:, None] + np.arange(-64, 65)[None, :]
        bits = np.clip(bits, 0, np.float32(1).view(np.int32)).reshape(-1)
        m = np.concatenate([bits.astype(np.int32).view(np.float32),
                            np.random.default_rng(T).random(20000, dtype=np.float32),
                            np.float32([0.0, 1.0, -0.0])])
        np.testing.assert_array_equal(b.counts(m), np.searchsorted(U, m, side="left"))
        # a pixel is foreground at merged position p exactly where its count exceeds p
        for j in (0, T // 2, T - 1):
            assert U[b.grid_pos[j]] == b.grid[j]
        if native is not None:
            assert U[b.native_pos] == np.float32(native)


def test_every_grid_size_is_supported():
    for T in list(range(1, 300)) + [997, 1000, 4096, 10_000]:
        ThresholdBins(T)  # raises if float32(e) / T stopped reproducing float32(e / T)
    with pytest.raises(WsssBenchError, match="1..10000"):
        SweepEvaluator(3, num_thresholds=10_001)
    with pytest.raises(WsssBenchError, match="1..10000"):
        SweepEvaluator(3, num_thresholds=0)
    with pytest.raises(WsssBenchError, match="GiB of counts"):
        SweepEvaluator(255, num_thresholds=10_000)


def test_power_rule_threshold_is_the_literal_rule():
    for alpha in (1.0, 4.0, 32.0, 100.0):
        t = power_rule_threshold(alpha)
        near = (t.view(np.int32) + np.arange(-5000, 5000)).astype(np.int32).view(np.float32)
        m = np.concatenate([near, np.random.default_rng(0).random(100000, dtype=np.float32)])
        np.testing.assert_array_equal(m > t, m > np.power(np.float32(1) - m, alpha))
    assert abs(float(power_rule_threshold(32.0)) - 0.0770) < 1e-3
    with pytest.raises(WsssBenchError, match="exponent"):
        NativeRule("power", 0)
    with pytest.raises(WsssBenchError, match=r"\[0, 1\]"):
        NativeRule("constant", 1.5)
    with pytest.raises(WsssBenchError, match="native rule"):
        NativeRule("linear", 0.5)
    assert NativeRule.parse("power:32") == NativeRule("power", 32.0)
    assert NativeRule.parse("0.15") == NativeRule.parse(0.15) == NativeRule("constant", 0.15)
    assert NativeRule.parse({"rule": "constant", "value": 0.5}) == NativeRule("constant", 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_image_counts_sum_to_the_split_confusion(backend):
    rng = np.random.default_rng(1)
    C = 5
    ev = feed(SweepEvaluator(C, native_rule=("power", 32.0), backend=backend), random_images(rng, 10, C), "x")
    for j in (0, 42, 99, "native"):
        pic = ev.per_image_counts(j)
        conf = ev.native_confusion() if j == "native" else ev.confusion(j)
        tp = np.diag(conf)
        np.testing.assert_array_equal(pic["tp"].sum(0), tp)
        np.testing.assert_array_equal(pic["fp"].sum(0), conf.sum(0) - tp)
        np.testing.assert_array_equal(pic["fn"].sum(0), conf.sum(1) - tp)


def test_per_image_counts_are_each_images_own_confusion():
    rng = np.random.default_rng(4)
    C = 6
    images = random_images(rng, 6, C)
    ev = feed(SweepEvaluator(C), images, "p")
    for j in (3, 37):
        pic = ev.per_image_counts(j)
        for i, img in enumerate(images):
            row = list(pic["ids"]).index(f"p{i}")
            conf = naive_confusion([img], C, np.float32(j / 100))
            tp = np.diag(conf)
            np.testing.assert_array_equal(pic["tp"][row], tp)
            np.testing.assert_array_equal(pic["fp"][row], conf.sum(0) - tp)
            np.testing.assert_array_equal(pic["fn"][row], conf.sum(1) - tp)


def test_calibration_split_follows_sha1_rule():
    ids = [f"2007_{i:06d}" for i in range(200)]
    cal = [i for i in ids if is_calibration_id(i)]
    assert 5 < len(cal) < 40  # about a tenth
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
    assert r["calibrated"]["miou"] == metrics_from_confusion(ref_rest[jc])["miou"]


def test_best_threshold_and_native_rule_on_a_hand_worked_case():
    # one image, one class: scores 0.2 on the object, 0.1 elsewhere
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    s = np.array([[[0.2, 0.2, 0.1, 0.1]]], dtype=np.float32)
    ev = SweepEvaluator(2, native_rule=("constant", 0.5))
    ev.update(s, [1], gt, image_id="a")
    r = ev.results()
    c = r["sweep"]["miou"]
    # t <= 0.09: all foreground -> IoU_fg 2/4, IoU_bg 0 -> 0.25; 0.10..0.19: perfect; t >= 0.2: background only
    assert c[9] == pytest.approx(0.25) and c[10] == pytest.approx(1.0)
    assert c[19] == pytest.approx(1.0) and c[20] == pytest.approx(0.25)
    assert r["best_threshold"] == 0.1 and r["best_threshold_index"] == 10
    assert r["native"]["miou"] == pytest.approx(0.25)
    assert len(r["sweep"]["thresholds"]) == 100


def test_version_one_native_threshold_argument_still_reads_the_curve():
    rng = np.random.default_rng(7)
    images = random_images(rng, 5, 4)
    ev = feed(SweepEvaluator(4), images)
    r = ev.results(native_threshold=0.15)
    assert r["native"]["exact"] is True and r["native"]["threshold_index"] == 15
    exact = feed(SweepEvaluator(4, native_rule=0.15), images)
    assert r["native"]["miou"] == exact.results()["native"]["miou"]
    assert ev.results(native_threshold=0.0770)["native"]["exact"] is False


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
    with pytest.raises(WsssBenchError, match="twice"):
        ev.update(np.zeros((2, 2, 2)), [1, 1], g)
    with pytest.raises(WsssBenchError, match="integer"):
        ev.update(np.zeros((1, 2, 2)), [1], g.astype(np.float32))
    assert ev.image_ids == []  # nothing half-added


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 8))
def test_merging_halves_equals_evaluating_the_whole(seed, split):
    rng = np.random.default_rng(seed)
    C = 5
    imgs = random_images(rng, 8, C, size=(7, 6))
    whole, a, b = (SweepEvaluator(C, native_rule=("power", 32.0)) for _ in range(3))
    for i, (s, c, g) in enumerate(imgs):
        whole.update(s, c, g, image_id=str(i))
        (a if i < split else b).update(s, c, g, image_id=str(i))
    a.merge(b)
    np.testing.assert_array_equal(a.state(), whole.state())
    np.testing.assert_array_equal(a.per_image_counts(30)["tp"], whole.per_image_counts(30)["tp"])
    assert a.results() == whole.results()


def test_torch_and_numpy_backends_agree_and_hist_is_a_shared_view():
    rng = np.random.default_rng(5)
    imgs = random_images(rng, 6, 6)
    a = feed(SweepEvaluator(6, native_rule=0.15), imgs)
    b = SweepEvaluator(6, native_rule=0.15, backend="torch")
    for i, (s, c, g) in enumerate(imgs):  # torch inputs too
        b.update(torch.from_numpy(s), torch.from_numpy(np.asarray(c)), torch.from_numpy(g), image_id=f"img{i}")
    np.testing.assert_array_equal(a.state(), b.state())
    assert a.results() == b.results()
    h = a.hist  # torch view for in-place all-reduce (torch.distributed)
    h += 1
    assert int(a.state().min()) >= 1


def test_mismatched_evaluators_do_not_merge():
    with pytest.raises(ValueError):
        SweepEvaluator(3, native_rule=0.15).merge(SweepEvaluator(3, native_rule=0.5))
    with pytest.raises(ValueError):
        SweepEvaluator(3).merge(SweepEvaluator(3, num_thresholds=10))


def test_grid_thresholds_are_float32_of_the_decimal():
    g = grid_thresholds(100)
    assert g.dtype == np.float32 and g[15] == np.float32(0.15) and g[0] == 0
    assert [float(np.float32(j / 100)) for j in range(100)] == g.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_sweep_on_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    C = 6
    imgs = random_images(rng, 6, C)
    cpu = feed(SweepEvaluator(C, native_rule=("power", 32.0)), imgs)
    gpu = SweepEvaluator(C, device="cuda", native_rule=("power", 32.0))
    for i, (s, c, g) in enumerate(imgs):
        gpu.update(torch.from_numpy(s).cuda(), c, torch.from_numpy(g).cuda(), image_id=f"img{i}")
    assert gpu.hist.is_cuda
    np.testing.assert_array_equal(cpu.state(), gpu.state())
    assert cpu.results() == gpu.results()
