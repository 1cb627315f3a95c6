"""The demo's training objectives, checked against naive per-class / per-patch loops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from wsss_bench.demo import train as T
from wsss_bench.methods.edam import EDAMNet
from wsss_bench.methods.registry import load_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_edam_training_head_scores_each_class_from_its_own_normalised_mask():
    torch.manual_seed(0)
    net = EDAMNet(5, width=0.0625).eval()
    head = T.EDAMTrainingHead(net.out_channels, 5, hidden=8)
    x = torch.randn(2, 3, 40, 48)
    scores = head(net, x)
    assert scores.shape == (2, 5)
    feats = net.features(x)
    raw = F.conv2d(feats, net.mask_layer.weight, padding=1)  # [2, 6, h, w]
    proj = head.d_d(feats)
    for n in range(2):
        for c in range(5):
            num = torch.zeros(8)
            den = torch.zeros(())
            for i in range(raw.shape[2]):
                for j in range(raw.shape[3]):
                    v = raw[n, :, i, j]
                    m = (v[c] / v.norm().clamp_min(1e-12)).abs()  # EDAM's |L2-normalised| mask value
                    num = num + m * proj[n, :, i, j]
                    den = den + m
            expected = (num / den) @ head.fc[c]
            assert torch.allclose(scores[n, c], expected, rtol=1e-4, atol=1e-5), (n, c)


def test_edam_training_reaches_the_da_layer_and_trains_batch_norm_statistics():
    adapter = load_method("edam")(5, backbone="resnet38-w0.0625")
    adapter.build()
    before = adapter.model.bn7.running_mean.clone()
    w0 = adapter.model.mask_layer.weight.detach().clone()
    spec = dataclasses.replace(T.DEMO_MODELS["edam"], steps=2, batch=4, sizes=(32,))
    x = torch.randn(8, 3, 32, 32)
    y = (torch.rand(8, 5) < 0.4).float()
    T.train_one(adapter, spec, x, y, seed=0)
    assert not torch.equal(adapter.model.mask_layer.weight, w0)
    assert not torch.equal(adapter.model.bn7.running_mean, before)  # batch norms learned statistics
    assert not adapter.model.training  # handed back in eval mode


def test_a_larger_training_set_extends_the_smaller_one(tmp_path):
    from wsss_bench.data.synthetic import ensure_synthetic

    small = ensure_synthetic(tmp_path / "s", 8, 1234, (48, 64))
    large = ensure_synthetic(tmp_path / "l", 12, 1234, (48, 64))
    for i in range(8):
        name = f"JPEGImages/synth_{i:05d}.jpg"
        assert (small / name).read_bytes() == (large / name).read_bytes()
    val_small = (small / "ImageSets/Segmentation/val.txt").read_text().split()
    train_large = (large / "ImageSets/Segmentation/train.txt").read_text().split()
    assert val_small and not set(val_small) & set(train_large)  # no val image is trained on
