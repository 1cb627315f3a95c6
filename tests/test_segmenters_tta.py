"""The test-time protocol: every fusion rule equals a hand-written loop over the views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_bench.errors import WsssBenchError
from wsss_bench.refine import crf_available, dense_crf
from wsss_bench.segmenters.base import DEEPLAB_CRF, STANDARD_TEST_SETTINGS, TestTimeSettings
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter
from wsss_bench.segmenters.tta import fused_scores, predict, view_size


def tiny_net(num_classes: int = 4, stride: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, num_classes, 3, 1, 1))
    return net.eval()


def up(t, size):
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def test_standard_protocol_equals_softmax_mean_over_twelve_views():
    net = tiny_net()
    x = torch.randn(2, 3, 23, 31, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = fused_scores(net, x, STANDARD_TEST_SETTINGS)
        probs = []
        for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
            h, w = int(np.floor(23 * s)), int(np.floor(31 * s))
            v = x if (h, w) == (23, 31) else up(x, (h, w))
            probs.append(up(net(v), (23, 31)).softmax(1))
            probs.append(up(net(v.flip(-1)), (23, 31)).flip(-1).softmax(1))
        ref = torch.stack(probs).mean(0)
    assert len(probs) == 12
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 23, 31))


def test_more_native_equals_the_official_loop():
    """MoRe tools/infer_seg_voc.py: resize to int(448*sc) square, image+flip summed, max over scales."""
    net = tiny_net()
    s = TestTimeSettings(name="native", scales=(1.0, 1.25, 1.5), flip=True, flip_fusion="sum", fusion="max",
                         input_size=32)
    x = torch.randn(1, 3, 27, 41, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = fused_scores(net, x, s)
        seg_list = []
        for sc in (1.0, 1.25, 1.5):
            side = int(32 * sc)
            inp = up(x, (side, side))
            segs = up(net(torch.cat([inp, inp.flip(-1)])), (27, 41))
            seg_list.append(segs[:1] + segs[1:].flip(-1))
        ref = torch.max(torch.stack(seg_list), dim=0)[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def naive_bilinear(x: np.ndarray, out: tuple[int, int], step: tuple[float, float]) -> np.ndarray:
    """Bilinear resampling [C, H, W] -> [C, h, w] written out: output pixel i samples the input at
    ``(i + 0.5) * step - 0.5`` (clamped at 0; ``align_corners=False``); the source coordinate in
    float32 as PyTorch computes it on float tensors, the blend in float64."""
    def axis(n_in: int, n_out: int, st: float):
        src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(st) - np.float32(0.5),
                         np.float32(0.0)).astype(np.float64)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(x.shape[1], out[0], step[0])
    x0, x1, lx = axis(x.shape[2], out[1], step[1])
    x = x.astype(np.float64)
    top = x[:, y0][:, :, x0] * (1 - lx) + x[:, y0][:, :, x1] * lx
    bottom = x[:, y1][:, :, x0] * (1 - lx) + x[:, y1][:, :, x1] * lx
    return top * (1 - ly[:, None]) + bottom * ly[:, None]


@pytest.mark.parametrize("resize", ["float-size", "float-scale-factor"])
def test_float_views_sample_with_the_step_of_their_mode(resize):
    """``float-size`` samples with step in/out, ``float-scale-factor`` with 1/p (the MSC's
    ``F.interpolate(x, scale_factor=p)``): same size, different grid."""
    from wsss_bench.segmenters.tta import make_view

    x = torch.randn(1, 3, 281, 375, generator=torch.Generator().manual_seed(5))
    s = TestTimeSettings(scales=(0.75,), resize=resize)
    got = make_view(x, 0.75, s)[0].numpy()
    assert got.shape == (3, 210, 281)
    step = (np.float32(281) / np.float32(210), np.float32(375) / np.float32(281)) if resize == "float-size" \
        else (1 / 0.75, 1 / 0.75)
    # 1e-4: PyTorch may fuse the source-coordinate multiply-add (rows 1e-5 px apart)
    np.testing.assert_allclose(got, naive_bilinear(x[0].numpy(), (210, 281), step), atol=1e-4)
    other = (1 / 0.75, 1 / 0.75) if resize == "float-size" else (281 / 210, 375 / 281)
    assert np.abs(got - naive_bilinear(x[0].numpy(), (210, 281), other)).max() > 1e-2


def test_fuse_at_logits_equals_the_msc_max_then_upsample():
    """deeplab-pytorch MSC: the image and its scale_factor views, logits resized to the scale-1.0
    logit size, max, then upsampled to the image; main.py: argmax of the softmax."""
    net = tiny_net(stride=4)
    s = DeepLabV2Segmenter.native
    assert s.resize == "float-scale-factor"
    x = torch.randn(1, 3, 33, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = fused_scores(net, x, s)
        base = net(x)
        pyramid = []
        for p in (0.5, 0.75):
            size = (int(33 * p), int(45 * p))
            v = torch.from_numpy(naive_bilinear(x[0].numpy(), size, (1 / p, 1 / p))).float()[None]
            pyramid.append(up(net(v), base.shape[-2:]))
        ref = up(torch.max(torch.stack([base] + pyramid), dim=0)[0], (33, 45))
        pred = predict(net, x, s)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(pred, got.softmax(1).argmax(1))


@pytest.mark.parametrize("fusion", ["mean", "sum"])
def test_logit_mean_and_sum_with_flip_mean(fusion):
    net = tiny_net()
    s = TestTimeSettings(scales=(0.75, 1.5), flip=True, flip_fusion="mean", fusion=fusion)
    x = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = fused_scores(net, x, s)
        per_scale = []
        for sc in (0.75, 1.5):
            v = up(x, (int(20 * sc), int(24 * sc)))
            per_scale.append((up(net(v), (20, 24)) + up(net(v.flip(-1)), (20, 24)).flip(-1)) / 2)
        ref = torch.stack(per_scale).sum(0)
        if fusion == "mean":
            ref = ref / 2
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_argmax_of_softmax_mean_is_the_prediction_and_batching_does_not_change_it():
    net = tiny_net()
    x = torch.randn(3, 3, 17, 19, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        batched = predict(net, x, STANDARD_TEST_SETTINGS)
        single = torch.cat([predict(net, x[i:i + 1], STANDARD_TEST_SETTINGS) for i in range(3)])
        ref = fused_scores(net, x, STANDARD_TEST_SETTINGS).argmax(1)
    assert torch.equal(batched, ref)
    assert torch.equal(batched, single)


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")
def test_crf_row_is_argmax_of_dense_crf_of_the_fused_probabilities():
    net = tiny_net()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (1, 18, 22, 3), dtype=np.uint8)
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255
    s = STANDARD_TEST_SETTINGS.replace(scales=(1.0, 1.5)).with_crf()
    with torch.no_grad():
        got = predict(net, x, s, raw_images=list(raw))
        probs = fused_scores(net, x, s)[0]
    ref = np.asarray(dense_crf(raw[0], probs.numpy(), DEEPLAB_CRF)).argmax(0)
    assert s.name == "standard+crf" and s.crf == DEEPLAB_CRF
    np.testing.assert_array_equal(got[0].numpy(), ref)


def test_view_size_floors_and_uses_input_size():
    assert view_size(375, 500, 0.75) == (281, 375)
    assert view_size(375, 500, 1.75) == (656, 875)
    assert view_size(375, 500, 1.25, input_size=448) == (560, 560)
    assert view_size(3, 3, 0.1) == (1, 1)


def test_settings_are_validated_and_named():
    with pytest.raises(WsssBenchError, match="fusion"):
        TestTimeSettings(fusion="median")
    with pytest.raises(WsssBenchError, match="scales"):
        TestTimeSettings(scales=(1.0, -0.5))
    with pytest.raises(WsssBenchError, match="scale 1.0"):
        TestTimeSettings(scales=(0.5,), fuse_at="logits")
    with pytest.raises(WsssBenchError, match="resize must be one of"):
        TestTimeSettings(resize="pil")
    with pytest.raises(WsssBenchError, match="no input_size"):
        TestTimeSettings(resize="float-scale-factor", input_size=448)
    with pytest.raises(WsssBenchError, match="crf_image"):
        TestTimeSettings(crf_image="LAB")
    with pytest.raises(WsssBenchError, match="uint8 views"):
        fused_scores(tiny_net(), torch.zeros(1, 3, 8, 8), TestTimeSettings(resize="opencv-uint8"))
    seg = DeepLabV2Segmenter(21)
    assert seg.settings("standard") == STANDARD_TEST_SETTINGS
    assert seg.settings("native") is DeepLabV2Segmenter.native
    assert seg.settings("native+crf").crf == DEEPLAB_CRF
    assert seg.settings("native+crf").name == "native+crf"
    with pytest.raises(WsssBenchError, match="unknown test-time settings"):
        seg.settings("fast")
    d = STANDARD_TEST_SETTINGS.to_dict()
    assert d["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and d["flip"] and d["crf"] is None
    assert (d["resize"], d["crf_image"]) == ("float-size", "RGB")
