"""ImageNet initial weights: torchvision and timm ResNet layouts onto DeepLab-v2 / v3+ backbones,
the input-convention conversion checked against torchvision's own stem, and wrong files refused."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD
from wsss_bench.segmenters.deeplab import CAFFE_MEAN_BGR, DeepLabV2Segmenter, DeepLabV3PlusSegmenter
from wsss_bench.training.init import detect_layout, init_head, load_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tv101(tmp_path_factory):
    torch.manual_seed(0)
    m = torchvision.models.resnet101()  # random weights, nothing downloaded
    with torch.no_grad():  # non-trivial batch-norm statistics, so the conversion is really checked
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("init") / "resnet101_tv.pth"
    torch.save(m.state_dict(), path)
    return m.eval(), path


def test_torchvision_resnet101_maps_onto_deeplabv2_names(tv101):
    tv, path = tv101
    seg = DeepLabV2Segmenter(21)
    info = load_init(seg, str(path))
    assert info["layout"] == "torchvision" and len(info["sha256"]) == 64
    own = seg.model.state_dict()
    src = tv.state_dict()
    pairs = {"layer2.block1.reduce.conv.weight": "layer1.0.conv1.weight",
             "layer2.block1.shortcut.bn.running_var": "layer1.0.downsample.1.running_var",
             "layer4.block23.conv3x3.conv.weight": "layer3.22.conv2.weight",
             "layer5.block3.increase.bn.bias": "layer4.2.bn3.bias",
             "layer1.conv1.bn.weight": "bn1.weight"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(own[ours], src[theirs], rtol=0, atol=0)
    # every backbone tensor came from the file: 104 convolutions + their batch norms
    n_conv = sum(1 for k in own if k.endswith(".conv.weight"))
    assert n_conv == sum(1 for k in src if k.endswith("weight") and src[k].ndim == 4) == 104


def test_stem_of_converted_weights_equals_torchvision_stem_on_the_same_image(tv101):
    """DeepLab-v2 takes BGR minus the Caffe mean; torchvision RGB (x/255 - mean)/std. After the
    conversion the stem (conv1 + frozen bn1) gives torchvision's output away from the zero-padded border."""
    tv, path = tv101
    seg = DeepLabV2Segmenter(21)
    load_init(seg, str(path))
    seg.model.eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (2, 40, 44, 3), generator=g, dtype=torch.uint8)
    x_rgb = image.permute(0, 3, 1, 2).float() / 255.0
    x_tv = (x_rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = tv.bn1(tv.conv1(x_tv))
    x_dl = image.permute(0, 3, 1, 2).float().flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    torch.testing.assert_close(seg.normalize(image), x_dl)  # the segmenter's own input convention
    stem = seg.model.layer1.conv1
    got = stem.bn(stem.conv(x_dl))
    torch.testing.assert_close(got[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], rtol=1e-4, atol=1e-4)
    assert (got[..., 0, :] - ref[..., 0, :]).abs().max() > 1e-4  # the border differs, as documented


def test_timm_resnet101_has_torchvision_names_and_loads(tmp_path):
    m = timm.create_model("resnet101", pretrained=False)
    path = tmp_path / "resnet101_timm.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    assert detect_layout(m.state_dict()) == "torchvision"
    seg = DeepLabV2Segmenter(21)
    assert load_init(seg, str(path))["layout"] == "torchvision"
    seg3 = DeepLabV3PlusSegmenter(21)
    load_init(seg3, str(path))
    torch.testing.assert_close(seg3.model.backbone.layer3[5].conv2.weight, m.layer3[5].conv2.weight)


def test_deeplabv3plus_takes_torchvision_weights_as_they_are(tv101):
    tv, path = tv101
    seg = DeepLabV3PlusSegmenter(21)
    load_init(seg, str(path))
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(seg.model.backbone.state_dict()[k], v, rtol=0, atol=0)


def test_own_layout_init_skips_the_head(tmp_path):
    donor = DeepLabV2Segmenter(91, hparams={"width": 8, "blocks": [1, 1, 1, 1]}).build()  # 91 classes: other head
    path = tmp_path / "deeplabv1_init.pth"
    torch.save({f"base.{k}": v for k, v in donor.state_dict().items()}, path)
    seg = DeepLabV2Segmenter(21, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    assert load_init(seg, str(path))["layout"] == "deeplabv2"
    torch.testing.assert_close(seg.model.layer3.block1.reduce.conv.weight, donor.layer3.block1.reduce.conv.weight)
    assert seg.model.aspp.c0.weight.shape[0] == 21


def test_wrong_architecture_init_files_are_one_line_errors(tmp_path):
    r50 = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), r50)
    with pytest.raises(WsssBenchError) as e:
        load_init(DeepLabV2Segmenter(21), str(r50))
    msg = str(e.value)
    assert msg.startswith(str(r50)) and "missing keys: layer4.block7" in msg and "\n" not in msg
    vit = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), vit)
    with pytest.raises(WsssBenchError, match="not a ResNet checkpoint in the torchvision/timm layout"):
        load_init(DeepLabV2Segmenter(21), str(vit))
    wide = tmp_path / "wide.pth"
    torch.save(torchvision.models.wide_resnet50_2().state_dict(), wide)
    with pytest.raises(WsssBenchError, match="shape mismatch"):
        load_init(DeepLabV3PlusSegmenter(21, backbone="resnet50"), str(wide))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WsssBenchError, match="refused to load|cannot read checkpoint"):
        load_init(DeepLabV2Segmenter(21), str(junk))


def test_head_init_rules():
    torch.manual_seed(0)
    net = DeepLabV2Segmenter(21).build()
    init_head(net, ("aspp.",), "normal-0.01")
    w = torch.cat([getattr(net.aspp, f"c{i}").weight.detach().reshape(-1) for i in range(4)])
    assert abs(float(w.std()) - 0.01) < 2e-4 and abs(float(w.mean())) < 2e-4
    assert all(float(getattr(net.aspp, f"c{i}").bias.detach().abs().max()) == 0 for i in range(4))
    v3 = DeepLabV3PlusSegmenter(21, hparams={"width": 8, "blocks": [1, 1, 1, 1]}).build()
    before = v3.backbone.conv1.weight.clone()
    init_head(v3, ("classifier.",), "kaiming-normal")
    conv = v3.classifier.classifier[0]
    assert abs(float(conv.weight.detach().std()) - (2.0 / (conv.in_channels * 9)) ** 0.5) < 0.1 * (2.0 / (conv.in_channels * 9)) ** 0.5
    torch.testing.assert_close(v3.backbone.conv1.weight, before)  # the backbone is left alone
    assert float((v3.classifier.project[1].weight.detach() - 1).abs().max()) == 0
