"""Hard pseudo labels under the protocol's strict rule, against a pixel loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.rules import (
    NativeRule,
    check_ignore_band,
    power_rule_threshold,
    pseudo_label,
    top_class,
)


def loop_label(scores, classes, t32, band=None):
    """Reference: per pixel, the first maximal map (classes ascending), foreground where m > t."""
    order = np.argsort(classes)
    classes, scores = np.asarray(classes)[order], scores[order]
    K, H, W = scores.shape
    out = np.zeros((H, W), np.uint8)
    for y in range(H):
        for x in range(W):
            best, k = -np.inf, 0
            for i in range(K):
                if scores[i, y, x] > best:
                    best, k = scores[i, y, x], classes[i]
            m = np.float32(min(max(best, 0.0), 1.0))
            out[y, x] = k if m > t32 else 0
            if band is not None and np.float32(band[0]) <= m < np.float32(band[1]):
                out[y, x] = 255
    return out


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    s = rng.random((3, 6, 7)).astype(np.float32)
    s[:, 0, :] = np.float32(0.15)  # ties at a threshold
    s[0, 1, :3] = np.float32(0.4)
    s[1, 1, :3] = np.float32(0.4)  # a tie between classes
    s[2, 2, 0] = 1.5
    s[:, 3, 0] = power_rule_threshold(32.0)
    return s, np.array([9, 2, 5])


def test_grid_index_threshold_and_rule_agree_with_the_loop(maps):
    s, cls = maps
    for j in (0, 15, 40, 99):
        np.testing.assert_array_equal(pseudo_label(s, cls, index=j), loop_label(s, cls, np.float32(j / 100)))
    for t in (0.15, 0.5, 0.333):
        np.testing.assert_array_equal(pseudo_label(s, cls, threshold=t), loop_label(s, cls, np.float32(t)))
    for rule in (("power", 32.0), ("constant", 0.15)):
        np.testing.assert_array_equal(pseudo_label(s, cls, rule=rule),
                                      loop_label(s, cls, NativeRule(*rule).threshold32))
    np.testing.assert_array_equal(pseudo_label(torch.from_numpy(s), cls, threshold=0.15),
                                  pseudo_label(s, cls, threshold=0.15))
    assert pseudo_label(np.zeros((0, 4, 5)), [], index=3).tolist() == np.zeros((4, 5)).tolist()


def test_ignore_band(maps):
    s, cls = maps
    got = pseudo_label(s, cls, threshold=0.5, ignore_band=(0.15, 0.6))
    np.testing.assert_array_equal(got, loop_label(s, cls, np.float32(0.5), band=(0.15, 0.6)))
    assert (got == 255).any() and (got[0] == 255).all()  # m = 0.15 is inside [0.15, 0.6)


@pytest.mark.parametrize("band", [(0.6, 0.2), (0.3, 0.3), (-0.1, 0.5), (0.2, 1.5), (float("nan"), 0.5), "0.2",
                                  (0.1, 0.2, 0.3)])
def test_bad_ignore_bands_are_refused(band):
    with pytest.raises(WsssBenchError, match="ignore band"):
        check_ignore_band(band)


def test_bad_arguments_are_refused(maps):
    s, cls = maps
    with pytest.raises(ValueError):
        pseudo_label(s, cls, index=3, threshold=0.5)
    with pytest.raises(WsssBenchError, match="0..99"):
        pseudo_label(s, cls, index=100)
    with pytest.raises(WsssBenchError, match=r"\[0, 1\]"):
        pseudo_label(s, cls, threshold=1.5)
    with pytest.raises(WsssBenchError, match="twice"):
        pseudo_label(s, [1, 1, 2], threshold=0.5)
    with pytest.raises(WsssBenchError, match="do not match"):
        pseudo_label(s, [1, 2], threshold=0.5)


def test_top_class_lowest_class_wins_ties():
    a = np.array([[0.5, 0.2]], np.float32)
    b = np.array([[0.5, 0.7]], np.float32)
    m, k = top_class([a, b], [3, 8])
    assert m.tolist() == [[0.5, np.float32(0.7)]] and k.tolist() == [[3, 8]]
    c = np.array([[0.9, 0.7]], np.float32)
    m, k = top_class([a, b, c], [3, 8, 11])
    assert k.tolist() == [[11, 8]]


def test_per_image_store_round_trips_through_append_extend_pickle_and_lists():
    import pickle

    from wsss_bench.metrics.rules import PerImageStore

    rng = np.random.default_rng(0)
    items = [(np.sort(rng.choice(20, size=k, replace=False)).astype(np.int16),
              rng.integers(0, 1 << 30, size=(k, 4, 3)).astype(np.int32)) for k in [0, 3, 1, 5] * 100]
    a, b = PerImageStore((4, 3), np.int32), PerImageStore((4, 3), np.int32)
    for c, r in items[:250]:
        a.append(c, r)
    for c, r in items[250:]:
        b.append(c, r)
    a.extend(pickle.loads(pickle.dumps(b)))
    c2 = PerImageStore.from_list(a.to_list(), (4, 3), np.int32)
    for store in (a, c2, pickle.loads(pickle.dumps(a))):
        assert len(store) == len(items)
        for i, (cls, rows) in enumerate(items):
            got_c, got_r = store[i]
            np.testing.assert_array_equal(got_c, cls)
            np.testing.assert_array_equal(got_r, rows)
    with pytest.raises(ValueError, match="shapes"):
        a.extend(PerImageStore((3,), np.int64))
