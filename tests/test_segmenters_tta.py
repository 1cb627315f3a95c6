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


def test_fuse_at_logits_equals_the_msc_max_then_upsample():
    """deeplab-pytorch MSC: max over scales at the scale-1.0 logit size, then upsample to the image."""
    net = tiny_net(stride=4)
    s = DeepLabV2Segmenter.native
    x = torch.randn(1, 3, 33, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = fused_scores(net, x, s)
        base = net(x)
        pyramid = [up(net(up(x, (int(33 * p), int(45 * p)))), base.shape[-2:]) for p in (0.5, 0.75)]
        ref = up(torch.max(torch.stack([base] + pyramid), dim=0)[0], (33, 45))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


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
    seg = DeepLabV2Segmenter(21)
    assert seg.settings("standard") == STANDARD_TEST_SETTINGS
    assert seg.settings("native") is DeepLabV2Segmenter.native
    assert seg.settings("native+crf").crf == DEEPLAB_CRF
    assert seg.settings("native+crf").name == "native+crf"
    with pytest.raises(WsssBenchError, match="unknown test-time settings"):
        seg.settings("fast")
    d = STANDARD_TEST_SETTINGS.to_dict()
    assert d["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and d["flip"] and d["crf"] is None
