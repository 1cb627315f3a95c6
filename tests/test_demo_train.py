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


def test_masked_patch_loss_is_the_mean_squared_error_on_the_masked_patches_only():
    torch.manual_seed(0)
    adapter = load_method("ad-cam")(5, backbone="vit_tiny_demo")
    adapter.build()
    model = adapter.model
    aux = T.MaskedPatchHead(64, T.vit_patch_size("ad-cam", model))
    assert aux.patch == 16
    x = torch.randn(2, 3, 32, 48)
    loss = aux.loss("ad-cam", model, x, torch.Generator().manual_seed(7))
    # the same draw of kept patches, then a per-patch loop
    keep = torch.rand(2, 1, 2, 3, generator=torch.Generator().manual_seed(7)) >= aux.ratio
    xm = x.clone()
    for n in range(2):
        for i in range(2):
            for j in range(3):
                if not keep[n, 0, i, j]:
                    xm[n, :, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)] = 0.0
    feats = T.vit_patch_features("ad-cam", model, xm)
    total, count = torch.zeros(()), 0
    for n in range(2):
        for i in range(2):
            for j in range(3):
                if keep[n, 0, i, j]:
                    continue
                pred = aux.decode(feats[n:n + 1, :, i:i + 1, j:j + 1]).reshape(-1)
                target = x[n, :, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)].reshape(-1)
                total = total + ((pred - target) ** 2).sum()
                count += target.numel()
    assert count > 0
    assert torch.allclose(loss, total / count, rtol=1e-5)


@pytest.mark.parametrize(("method", "backbone", "patch"), [
    ("ad-cam", "vit_tiny_demo_p8", 8), ("getam", "vit_tiny_demo", 16), ("more", "vit_tiny_demo", 16)])
def test_vit_patch_features_lie_on_the_patch_grid(method, backbone, patch):
    adapter = load_method(method)(5, backbone=backbone)
    adapter.build()
    assert T.vit_patch_size(method, adapter.model) == patch
    feats = T.vit_patch_features(method, adapter.model, torch.randn(1, 3, 4 * patch, 6 * patch))
    assert feats.shape[0] == 1 and feats.shape[2:] == (4, 6)


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
