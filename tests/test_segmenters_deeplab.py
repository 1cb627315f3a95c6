"""DeepLab-v2 / v3+ segmenters: public checkpoint layouts load strictly; logits equal an
independent functional forward written here from the public model files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsss_bench.errors import WsssBenchError
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter, DeepLabV3PlusSegmenter

# ------------------------------------------------------------------------------------------------
# DeepLab-v2: kazuto1011/deeplab-pytorch libs/models/{deeplabv2,resnet,msc}.py, written as data
# ------------------------------------------------------------------------------------------------


def public_deeplabv2_layout(blocks=(3, 4, 23, 3), width=64, n_classes=21, rates=(6, 12, 18, 24)):
    """Key -> shape of ``MSC(DeepLabV2(...)).state_dict()``: ``base.layer1.conv1`` 7x7 stem;
    ``base.layer{2..5}.block{i}.{reduce,conv3x3,increase}`` (+ ``shortcut`` in block1), each a
    ``{conv,bn}`` pair; ``base.aspp.c{i}`` 3x3 with bias."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, cin: int, cout: int, k: int) -> None:
        keys[f"{prefix}.conv.weight"] = (cout, cin, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.bn.{name}"] = (cout,)
        keys[f"{prefix}.bn.num_batches_tracked"] = ()

    conv_bn("base.layer1.conv1", 3, width, 7)
    cin = width
    for stage, n in enumerate(blocks):
        cout = width * 4 * 2 ** stage
        for i in range(1, n + 1):
            p = f"base.layer{stage + 2}.block{i}"
            first_in = cin if i == 1 else cout
            conv_bn(f"{p}.reduce", first_in, cout // 4, 1)
            conv_bn(f"{p}.conv3x3", cout // 4, cout // 4, 3)
            conv_bn(f"{p}.increase", cout // 4, cout, 1)
            if i == 1:
                conv_bn(f"{p}.shortcut", cin, cout, 1)
        cin = cout
    for i in range(len(rates)):
        keys[f"base.aspp.c{i}.weight"] = (n_classes, cin, 3, 3)
        keys[f"base.aspp.c{i}.bias"] = (n_classes,)
    return keys


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(".bn.weight") or k.endswith("bn1.weight") or k.endswith(".1.weight") and len(shape) == 1:
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * (0.2 if len(shape) == 4 else 0.1)
    return out


def test_deeplabv2_resnet101_names_and_shapes_equal_the_public_layout():
    seg = DeepLabV2Segmenter(21)
    own = {f"base.{k}": tuple(v.shape) for k, v in seg.build().state_dict().items()}
    expected = public_deeplabv2_layout()
    assert own == expected
    # a few entries pinned literally from the public ResNet-101 model
    assert expected["base.layer5.block1.shortcut.conv.weight"] == (2048, 1024, 1, 1)
    assert expected["base.layer4.block23.conv3x3.conv.weight"] == (256, 256, 3, 3)
    assert own["base.aspp.c3.weight"] == (21, 2048, 3, 3)


def bn(x, state, p):
    return F.batch_norm(x, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                        state[f"{p}.bias"], training=False, eps=1e-5)


def deeplabv2_reference(x, state, blocks, rates):
    """DeepLab-v2 forward from the state dict alone (stride on the 1x1 ``reduce``, dilation 2/4)."""
    def cbr(h, p, stride=1, pad=0, dil=1, relu=True):
        h = bn(F.conv2d(h, state[f"{p}.conv.weight"], None, stride, pad, dil), state, f"{p}.bn")
        return F.relu(h) if relu else h

    h = cbr(x, "base.layer1.conv1", 2, 3)
    h = F.max_pool2d(h, 3, 2, 1, ceil_mode=True)
    for stage, (n, stride, dil) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4), strict=True)):
        for i in range(1, n + 1):
            p = f"base.layer{stage + 2}.block{i}"
            s = stride if i == 1 else 1
            y = cbr(h, f"{p}.reduce", s)
            y = cbr(y, f"{p}.conv3x3", 1, dil, dil)
            y = cbr(y, f"{p}.increase", relu=False)
            sc = cbr(h, f"{p}.shortcut", s, relu=False) if i == 1 else h
            h = F.relu(y + sc)
    return sum(F.conv2d(h, state[f"base.aspp.c{i}.weight"], state[f"base.aspp.c{i}.bias"], 1, r, r)
               for i, r in enumerate(rates))


SMALL_V2 = {"width": 8, "blocks": [2, 1, 2, 1]}


def test_deeplabv2_public_checkpoint_loads_strictly_and_logits_match_reference(tmp_path):
    layout = public_deeplabv2_layout(blocks=(2, 1, 2, 1), width=8, n_classes=6)
    state = random_state(layout)
    path = tmp_path / "deeplabv2.pth"
    torch.save(state, path)
    seg = DeepLabV2Segmenter(6, hparams=SMALL_V2)
    sha = seg.load_checkpoint(str(path))
    assert len(sha) == 64
    seg.model.eval()
    x = torch.randn(2, 3, 45, 59, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = seg.logits(x)
        ref = deeplabv2_reference(x, state, (2, 1, 2, 1), (6, 12, 18, 24))
    assert got.shape == ref.shape == (2, 6, 6, 8)  # ceil-mode pooling: 45 -> 23 -> 12 -> 6
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_deeplabv2_accepts_dataparallel_prefix_and_missing_bn_counters(tmp_path):
    layout = public_deeplabv2_layout(blocks=(1, 1, 1, 1), width=8, n_classes=6)
    state = {f"module.{k}": v for k, v in random_state(layout).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "caffe.pth")
    seg = DeepLabV2Segmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    seg.load_checkpoint(str(tmp_path / "caffe.pth"))
    got = seg.model.state_dict()["layer2.block1.reduce.conv.weight"]
    assert torch.equal(got, state["module.base.layer2.block1.reduce.conv.weight"])


def test_deeplabv2_mismatched_checkpoint_error_names_file_and_keys(tmp_path):
    layout = public_deeplabv2_layout(blocks=(1, 1, 1, 1), width=8, n_classes=6)
    state = random_state(layout)
    del state["base.aspp.c3.weight"]
    state["base.aspp.c9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    seg = DeepLabV2Segmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    with pytest.raises(WsssBenchError) as e:
        seg.load_checkpoint(str(tmp_path / "bad.pth"))
    msg = str(e.value)
    assert "bad.pth" in msg and "aspp.c3.weight" in msg and "aspp.c9.weight" in msg


def test_deeplabv2_normalisation_is_bgr_minus_caffe_mean():
    seg = DeepLabV2Segmenter(21)
    img = torch.randint(0, 256, (1, 5, 7, 3), dtype=torch.uint8)
    got = seg.normalize(img)
    rgb = img[0].permute(2, 0, 1).float()
    expected = torch.stack([rgb[2] - 104.008, rgb[1] - 116.669, rgb[0] - 122.675])
    torch.testing.assert_close(got[0], expected, atol=1e-3, rtol=0)


def test_deeplabv2_native_protocol_is_the_msc_test():
    n = DeepLabV2Segmenter.native
    assert (n.scales, n.flip, n.fusion, n.fuse_at) == ((1.0, 0.5, 0.75), False, "max", "logits")


# ------------------------------------------------------------------------------------------------
# DeepLab-v3+: torchvision ResNet + VainF/DeepLabV3Plus-Pytorch network/_deeplab.py head
# ------------------------------------------------------------------------------------------------


def public_v3plus_head_layout(n_classes=21, cin=2048, low=256, ch=256, red=48):
    """``classifier.*`` keys of VainF's ``DeepLabHeadV3Plus`` (convs without bias, BN after each)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn_keys(p, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{p}.{name}"] = (c,)
        keys[f"{p}.num_batches_tracked"] = ()

    keys["classifier.project.0.weight"] = (red, low, 1, 1)
    bn_keys("classifier.project.1", red)
    keys["classifier.aspp.convs.0.0.weight"] = (ch, cin, 1, 1)
    bn_keys("classifier.aspp.convs.0.1", ch)
    for i in (1, 2, 3):
        keys[f"classifier.aspp.convs.{i}.0.weight"] = (ch, cin, 3, 3)
        bn_keys(f"classifier.aspp.convs.{i}.1", ch)
    keys["classifier.aspp.convs.4.1.weight"] = (ch, cin, 1, 1)
    bn_keys("classifier.aspp.convs.4.2", ch)
    keys["classifier.aspp.project.0.weight"] = (ch, 5 * ch, 1, 1)
    bn_keys("classifier.aspp.project.1", ch)
    keys["classifier.classifier.0.weight"] = (ch, red + ch, 3, 3)
    bn_keys("classifier.classifier.1", ch)
    keys["classifier.classifier.3.weight"] = (n_classes, ch, 1, 1)
    keys["classifier.classifier.3.bias"] = (n_classes,)
    return keys


def test_deeplabv3plus_resnet101_names_and_shapes_equal_torchvision_and_vainf():
    seg = DeepLabV3PlusSegmenter(21)
    own = {k: tuple(v.shape) for k, v in seg.build().state_dict().items()}
    tv = torchvision.models.resnet101(weights=None).state_dict()
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in tv.items() if not k.startswith("fc.")}
    expected.update(public_v3plus_head_layout())
    assert own == expected


def v3plus_head_reference(low, high, state, rates, size):
    def cbr(h, p, pad=0, dil=1):
        conv, norm = p
        h = F.conv2d(h, state[f"{conv}.weight"], None, 1, pad, dil)
        return F.relu(bn(h, state, norm))

    lowf = cbr(low, ("classifier.project.0", "classifier.project.1"))
    branches = [cbr(high, ("classifier.aspp.convs.0.0", "classifier.aspp.convs.0.1"))]
    for i, r in enumerate(rates, start=1):
        branches.append(cbr(high, (f"classifier.aspp.convs.{i}.0", f"classifier.aspp.convs.{i}.1"), r, r))
    pooled = high.mean(dim=(2, 3), keepdim=True)
    pooled = cbr(pooled, ("classifier.aspp.convs.4.1", "classifier.aspp.convs.4.2"))
    branches.append(F.interpolate(pooled, size=high.shape[-2:], mode="bilinear", align_corners=False))
    y = cbr(torch.cat(branches, 1), ("classifier.aspp.project.0", "classifier.aspp.project.1"))
    y = F.interpolate(y, size=lowf.shape[-2:], mode="bilinear", align_corners=False)
    y = cbr(torch.cat([lowf, y], 1), ("classifier.classifier.0", "classifier.classifier.1"), 1)
    y = F.conv2d(y, state["classifier.classifier.3.weight"], state["classifier.classifier.3.bias"])
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3plus_vainf_checkpoint_loads_and_logits_match_torchvision_reference(tmp_path, output_stride):
    dilate = [False, False, True] if output_stride == 16 else [False, True, True]
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 2, 1],
                                          replace_stride_with_dilation=dilate)
    layout = {f"backbone.{k}": tuple(v.shape) for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    layout.update(public_v3plus_head_layout(n_classes=6, ch=16, red=8))
    state = random_state(layout, seed=3)
    # VainF's training checkpoint format
    torch.save({"cur_itrs": 10, "model_state": state, "best_score": 0.5}, tmp_path / "best.pth")
    seg = DeepLabV3PlusSegmenter(6, hparams={"blocks": [1, 1, 2, 1], "output_stride": output_stride,
                                             "decoder_channels": 16, "low_level_channels": 8})
    seg.load_checkpoint(str(tmp_path / "best.pth"))
    seg.model.eval()
    tv.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                       strict=False)
    tv.eval()
    x = torch.randn(1, 3, 37, 43, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        low = tv.layer1(h)
        high = tv.layer4(tv.layer3(tv.layer2(low)))
        ref = v3plus_head_reference(low, high, state, rates, x.shape[-2:])
        got = seg.logits(x)
    assert got.shape == (1, 6, 37, 43)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_deeplabv3plus_plain_state_dict_with_module_prefix_loads(tmp_path):
    seg = DeepLabV3PlusSegmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1], "decoder_channels": 16,
                                             "low_level_channels": 8})
    state = {f"module.{k}": v.clone() + 1 for k, v in seg.build().state_dict().items()}
    torch.save(state, tmp_path / "plain.pth")
    fresh = DeepLabV3PlusSegmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1], "decoder_channels": 16,
                                               "low_level_channels": 8})
    fresh.load_checkpoint(str(tmp_path / "plain.pth"))
    assert torch.equal(fresh.model.state_dict()["classifier.classifier.3.bias"],
                       state["module.classifier.classifier.3.bias"])


def test_unknown_hyperparameter_and_backbone_are_user_errors():
    with pytest.raises(WsssBenchError, match="no hyper-parameter 'depth'"):
        DeepLabV2Segmenter(21, hparams={"depth": 3})
    with pytest.raises(WsssBenchError, match="no backbone"):
        DeepLabV3PlusSegmenter(21, backbone="vgg16")
    with pytest.raises(WsssBenchError, match="blocks"):
        DeepLabV2Segmenter(21, hparams={"blocks": [1, 1]}).build()
