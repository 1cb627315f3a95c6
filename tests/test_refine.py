"""Optional refinements: EDAM's saliency rule, CRF background row, dense CRF."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_bench import refine
from wsss_bench.errors import WsssBenchError
from wsss_bench.refine import (
    EDAM_CRF,
    CRFParams,
    SaliencyParams,
    apply_saliency,
    dense_crf,
    load_saliency,
    with_background,
)

# -- saliency --------------------------------------------------------------------------------------


def _edam_rule_21_channels(norm_cam: dict[int, np.ndarray], sal: np.ndarray, theta: float, alpha: float,
                           beta: float) -> np.ndarray:
    """EDAM infer_cls.py with --sal_path, pixel by pixel over all 21 channels (absent classes 0)."""
    h, w = sal.shape
    out = np.zeros((h, w), np.int64)
    for y in range(h):
        for x in range(w):
            channel = [0.0] * 21
            for c, m in norm_cam.items():
                channel[c + 1] = float(m[y, x])
            for i in range(1, 21):
                if channel[i] < alpha:
                    channel[i] = -2.0
                elif channel[i] > beta:
                    channel[i] = 2.0
            channel[0] = 1.0 if sal[y, x] <= theta * 100 else 0.0
            best = 0
            for i in range(21):
                if channel[i] > channel[best]:
                    best = i
            out[y, x] = best
    return out


def test_saliency_rule_hand_worked_case():
    # two classes, 1x4 pixels; theta 0.2 -> not salient where saliency <= 20
    scores = np.array([[[0.3, 1.0, 0.0, 0.6]],
                       [[0.5, 0.2, 0.0, 0.6]]], np.float32)
    sal = np.array([[200, 10, 255, 5]], np.uint8)
    labels = apply_saliency(scores, sal, SaliencyParams(theta=0.2, alpha=1e-6, beta=0.99999))
    # px0 salient: bg 0, classes .3/.5 -> 2; px1 not salient: bg 1, class 0 is 1.0 > beta -> 2 -> 1
    # px2 salient but both scores < alpha -> -2, bg 0 wins; px3 not salient: bg 1 beats 0.6
    assert labels.tolist() == [[2, 1, 0, 0]]
    ids = apply_saliency(scores, sal, classes=np.array([3, 15]))
    assert ids.tolist() == [[15, 3, 0, 0]]


@pytest.mark.parametrize("theta,alpha,beta", [(0.2, 1e-6, 0.99999), (0.5, 0.0, 1.0), (0.3, 0.25, 0.9)])
def test_saliency_rule_equals_edam_21_channel_loop(theta, alpha, beta):
    rng = np.random.default_rng(0)
    h, w = 7, 9
    present = [0, 4, 11]
    norm_cam = {c: rng.random((h, w)).astype(np.float32) for c in present}
    norm_cam[4][2, :] = 0.0  # exact zeros: ties with absent classes and the background
    norm_cam[11][3, 3] = 1.0
    sal = rng.integers(0, 256, (h, w)).astype(np.uint8)
    expected = _edam_rule_21_channels(norm_cam, sal, theta, alpha, beta)
    scores = np.stack([norm_cam[c] for c in present])
    got = apply_saliency(torch.from_numpy(scores), sal, SaliencyParams(theta, alpha, beta),
                         classes=torch.tensor([c + 1 for c in present]))
    assert isinstance(got, torch.Tensor)
    assert np.array_equal(got.numpy(), expected)


def test_saliency_shape_mismatch_is_an_error():
    with pytest.raises(WsssBenchError, match="does not match"):
        apply_saliency(np.zeros((2, 4, 4), np.float32), np.zeros((4, 5), np.uint8))


def test_load_saliency_reads_grey_png_converts_colour_and_names_bad_files(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "a.png")
    assert np.array_equal(load_saliency(tmp_path, "a", (3, 4)), grey)
    rgb = np.stack([grey] * 3, axis=-1)
    Image.fromarray(rgb, "RGB").save(tmp_path / "b.png")
    assert np.array_equal(load_saliency(tmp_path, "b", (3, 4)), grey)
    with pytest.raises(WsssBenchError, match=r"c\.png: saliency map not found"):
        load_saliency(tmp_path, "c", (3, 4))
    with pytest.raises(WsssBenchError, match=r"a\.png: saliency map is 4x3, image is 5x3"):
        load_saliency(tmp_path, "a", (3, 5))
    (tmp_path / "d.png").write_bytes(b"not a png")
    with pytest.raises(WsssBenchError, match=r"d\.png: cannot read saliency map"):
        load_saliency(tmp_path, "d", (3, 4))


# -- CRF -------------------------------------------------------------------------------------------


def test_with_background_prepends_one_minus_max_to_the_power_alpha():
    s = np.array([[[0.2, 0.9]], [[0.6, 0.1]]], np.float32)
    out = with_background(s, alpha=2.0)
    assert np.allclose(out[0], [[0.16, 0.01]]) and np.array_equal(out[1:], s)
    t = with_background(torch.from_numpy(s))
    assert torch.allclose(t[0], torch.tensor([[0.4, 0.1]]))


def test_edam_crf_parameters():
    assert (EDAM_CRF.gaussian_sxy, EDAM_CRF.gaussian_compat) == (3.0, 3.0)
    assert (EDAM_CRF.bilateral_sxy, EDAM_CRF.bilateral_srgb, EDAM_CRF.bilateral_compat) == (80.0, 13.0, 10.0)
    assert EDAM_CRF.iterations == 3


def test_dense_crf_without_the_package_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert not refine.crf_available()
    with pytest.raises(WsssBenchError, match="dense CRF needs the optional package pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))


def _two_region_case():
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, 16:] = (220, 40, 40)
    img[:, :16] = (30, 60, 200)
    probs = np.empty((2, 24, 32), np.float32)
    probs[1] = np.where(np.arange(32)[None, :] >= 16, 0.7, 0.3)
    probs[1, 5, 5] = 0.9  # an isolated wrong pixel in the left region
    probs[1, 12, 25] = 0.1  # and one in the right region
    probs[0] = 1 - probs[1]
    return img, probs


def test_dense_crf_with_zero_iterations_is_the_normalised_clipped_unary():
    pytest.importorskip("pydensecrf.densecrf")
    img, probs = _two_region_case()
    probs[0, 0, 0] = 0.0  # clipped to 1e-5 before the log
    q = dense_crf(img, probs, CRFParams(iterations=0))
    p = np.clip(probs, 1e-5, 1.0)
    assert np.allclose(q, p / p.sum(axis=0, keepdims=True), atol=1e-5)


def test_dense_crf_fixes_isolated_pixels_along_colour_edges():
    pytest.importorskip("pydensecrf.densecrf")
    img, probs = _two_region_case()
    q = dense_crf(img, torch.from_numpy(probs), EDAM_CRF)
    assert isinstance(q, torch.Tensor) and q.shape == (2, 24, 32)
    assert torch.allclose(q.sum(0), torch.ones(24, 32), atol=1e-4)
    labels = q.argmax(0).numpy()
    expected = (np.arange(32)[None, :] >= 16).repeat(24, axis=0)
    assert probs.argmax(0)[5, 5] == 1 and probs.argmax(0)[12, 25] == 0
    assert np.array_equal(labels, expected)


def test_dense_crf_rejects_mismatched_inputs():
    pytest.importorskip("pydensecrf.densecrf")
    with pytest.raises(WsssBenchError, match="do not match the image"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 5), 0.5, np.float32))
    with pytest.raises(WsssBenchError, match="uint8 HxWx3"):
        dense_crf(np.zeros((4, 4), np.uint8), np.full((2, 4, 4), 0.5, np.float32))
