"""The demo's training objectives, checked against naive per-class / per-patch loops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from wsss_bench.demo import train as T
from wsss_bench.errors import WsssBenchError
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


def test_cam_pseudo_labels_follow_tocos_rule_pixel_by_pixel():
    torch.manual_seed(1)
    cam = torch.randn(3, 4, 5, 6) * 2
    y = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.float32)
    got = T.cam_pseudo_labels(cam, y)
    for b in range(3):
        maxima = [max(float(cam[b, k].clamp(min=0).max()), 0.0) for k in range(4)]
        for i in range(5):
            for j in range(6):
                best, label = -1.0, 0
                for k in range(4):  # the first class wins a tie, as argmax does
                    v = float(cam[b, k, i, j].clamp(min=0)) * float(y[b, k]) / (maxima[k] * float(y[b, k]) + 1e-5)
                    if v > best:
                        best, label = v, k + 1
                want = 0 if best <= 0.25 else (255 if best <= 0.5 else label)
                assert int(got[b, i, j]) == want, (b, i, j)


def test_class_patch_contrast_is_the_mean_negative_log_softmax_over_each_class_region():
    torch.manual_seed(2)
    logp = torch.randn(2, 3, 10).log_softmax(-1)
    labels = torch.tensor([[1, 1, 0, 255, 2, 2, 2, 0, 3, 1], [0, 0, 0, 0, 3, 3, 255, 0, 0, 0]])
    y = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # image 1 has class 1 but no patch labelled 1
    total = 0.0
    for b in range(2):
        for k in range(3):
            if y[b, k] == 0:
                continue
            idx = [n for n in range(10) if int(labels[b, n]) == k + 1]
            total += -sum(float(logp[b, k, n]) for n in idx) / (len(idx) + 1e-4)
    assert float(T.class_patch_contrast(logp, labels, y)) == pytest.approx(total / 2, rel=1e-6)


def test_more_block_output_is_the_raw_token_stream_before_the_final_norm():
    from wsss_bench.methods.backbones.vit_mct import MultiClassTokenViT, ViTConfig

    torch.manual_seed(3)
    vit = MultiClassTokenViT(9, ViTConfig(embed_dim=32, depth=4, num_heads=2, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 48)
    normed, kept = vit.forward_tokens_and_block(x, -3)
    # the same forward pass written out block by block
    t = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(x)], dim=1) + vit.position_embedding(64, 48)
    outs = []
    for blk in vit.blocks:
        t = blk(t)
        outs.append(t)
    assert torch.allclose(kept, outs[1], atol=1e-6)
    assert torch.allclose(normed, vit.norm(outs[-1]), atol=1e-6)
    assert torch.equal(vit.forward_tokens(x), normed)
    with pytest.raises(WsssBenchError, match="out of range"):
        vit.forward_tokens_and_block(x, -5)
    assert T.MoReTrainingHead(32, 5, depth=12).aux_block == 9  # MoRe's aux_layer -3 of 12
    with pytest.raises(ValueError, match="label_scales is empty"):
        T.MoReTrainingHead(32, 5, depth=2, label_scales=())


def test_more_training_reaches_the_class_tokens_gcr_and_both_classifiers():
    adapter = load_method("more")(5, backbone="vit_tiny_demo")
    adapter.build()
    model = adapter.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # cle_from=0 so the contrast term runs from the first step
    head = T.MoReTrainingHead(model.classifier.in_channels, 5, len(model.encoder.blocks), cle_from=0)
    assert head.aux_block == 1  # the demo's 2 blocks: the last one, before the final norm
    x = torch.randn(4, 3, 48, 48)
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float32)
    loss = head(model, x, y, step=0)
    loss.backward()
    assert head.aux_classifier.weight.grad.abs().sum() > 0
    for name in ("classifier.weight", "graph_layer.head_proj.weight", "encoder.cls_token", "encoder.blocks.0.attn.qkv.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    no_cle = T.MoReTrainingHead(model.classifier.in_channels, 5, len(model.encoder.blocks), cle_from=10)
    no_cle.aux_classifier.weight.data.copy_(head.aux_classifier.weight.data)
    assert float(no_cle(model, x, y, step=0).detach()) < float(loss.detach())  # the contrast adds a positive term
    spec = dataclasses.replace(T.DEMO_MODELS["more"], steps=2, batch=4, sizes=(48,))
    T.train_one(adapter, spec, x, y, seed=0)
    assert not torch.equal(model.encoder.cls_token, before["encoder.cls_token"])
    assert not model.training


def test_more_multi_scale_aux_cam_matches_a_per_image_loop():
    adapter = load_method("more")(5, backbone="vit_tiny_demo")
    adapter.build()
    model = adapter.model
    torch.manual_seed(1)
    head = T.MoReTrainingHead(model.classifier.in_channels, 5, len(model.encoder.blocks),
                              label_scales=(1.0, 0.5, 1.5))
    x = torch.randn(2, 3, 64, 48)
    got = head.aux_cam(model, x)
    assert got.shape == (2, 5, 64, 48)
    for b in range(2):
        total = torch.zeros(5, 64, 48)
        for s in (1.0, 0.5, 1.5):
            img = x[b:b + 1]
            if s != 1.0:
                img = F.interpolate(img, size=(int(s * 64), int(s * 48)), mode="bilinear", align_corners=False)
            views = []
            for flipped in (False, True):
                v = img.flip(-1) if flipped else img
                _, _, block_map = model.features_and_block(v, head.aux_block)
                cam = F.interpolate(F.conv2d(block_map, head.aux_classifier.weight), size=(64, 48),
                                    mode="bilinear", align_corners=False)[0]
                views.append(cam.flip(-1) if flipped else cam)
            total += torch.clamp(torch.maximum(views[0], views[1]), min=0)
        for k in range(5):
            ref = total[k] - total[k].min()
            ref = ref / (ref.max() + 1e-5)
            assert torch.allclose(got[b, k], ref, atol=1e-5), (b, k)
    assert not got.requires_grad  # the pass takes no gradients
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.float32)
    head(model, x, y, step=head.cle_from).backward()  # the contrast on its labels still trains the tokens
    assert model.encoder.cls_token.grad.abs().sum() > 0
    # the demo's MoRe head uses MoRe's cam_scales
    assert T._training_head("more", model, 5).label_scales == T.MORE_LABEL_SCALES == (1.0, 0.5, 0.75, 1.5)
