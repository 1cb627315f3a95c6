"""DeepLab-v2 and DeepLab-v3+ segmenters with ResNet backbones.

**DeepLab-v2** (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI 2018), in the layout of the PyTorch
re-implementation that IRN- and EDAM-style pipelines train (kazuto1011/deeplab-pytorch,
``libs/models/deeplabv2.py``, ``libs/models/resnet.py``, ``libs/models/msc.py``):

- checkpoint keys under ``base.`` (the ``MSC`` wrapper), optionally ``module.`` (DataParallel);
- ``layer1`` the stem: ``conv1.{conv,bn}`` (7x7/2, 64) and a 3x3/2 max-pool with ``ceil_mode``;
- ``layer2..layer5`` the ResNet stages (ResNet-101: 3, 4, 23, 3 blocks) of MSRA bottlenecks
  ``blockN.{reduce,conv3x3,increase,shortcut}.{conv,bn}``; the stride sits on ``reduce`` (the 1x1),
  ``shortcut`` exists in the first block of each stage only; ``layer4``/``layer5`` are dilated 2/4
  (output stride 8);
- ``aspp.c0..c3``: 3x3 convolutions with bias, dilations 6, 12, 18, 24, whose outputs are summed.
- Input: BGR, minus the Caffe mean (B 104.008, G 116.669, R 122.675), no scaling.
- Input arithmetic (``libs/datasets/base.py``): ``cv2.imread`` BGR as float32, ``image -= mean_bgr``
  (a float64 array: computed in float64, rounded once to float32): ``normalize_dtype="float64"``.
- Native test (``main.py test`` with ``MSC(scales=[0.5, 0.75])``, ``libs/models/msc.py``): the image
  itself, then ``F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)`` for p = 0.5,
  0.75 (size ``floor(H p)``, sampling step ``1/p``: ``resize="float-scale-factor"``); the pyramid's
  logits resized (by size) to the scale-1.0 logit size, pixel-wise max; upsampled to the image size,
  softmax, argmax (wsss-bench takes the argmax of the logits: the same class, the softmax being
  increasing; the fidelity test checks it pixel for pixel); no flip. The dense CRF (``main.py crf``)
  is a separate row (:data:`~wsss_bench.segmenters.base.DEEPLAB_CRF`) on the plain RGB image: the
  official ``crf`` command passes the mean-subtracted BGR image cast to uint8 (negative values wrap
  around), which wsss-bench does not reproduce.
- Checkpoints without ``num_batches_tracked`` buffers (Caffe conversions) are accepted: the buffers
  (a counter that evaluation never reads) are filled with zeros.

**DeepLab-v3+** (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018). No single canonical PyTorch layout exists; wsss-bench follows
the most widely used re-implementation, VainF/DeepLabV3Plus-Pytorch (``network/_deeplab.py``,
``network/modeling.py``), whose backbone is torchvision's ResNet layout:

- ``backbone.{conv1,bn1,layer1..layer4}`` exactly as ``torchvision.models.resnet101`` (no ``fc``);
  output stride 16 (``layer4`` dilated) or 8 (``layer3`` and ``layer4`` dilated);
- ``classifier.project.{0,1}``: 1x1 conv (no bias) 256 -> 48 + BN on ``layer1``'s output;
- ``classifier.aspp.convs.0`` (1x1), ``.1..3`` (3x3, dilations 6/12/18 at OS 16, 12/24/36 at OS 8),
  ``.4`` (image pooling: ``.4.1`` conv, ``.4.2`` BN), each conv without bias + BN + ReLU, 256 channels;
  ``classifier.aspp.project.{0,1}``: 1x1 conv 1280 -> 256 + BN (+ dropout);
- ``classifier.classifier.{0,1}``: 3x3 conv (no bias) 304 -> 256 + BN, ``.3``: 1x1 conv to the
  classes (with bias); the logits are upsampled bilinearly to the input size inside the network.
- Input: RGB, ImageNet mean/std in torchvision's float32 arithmetic (``ExtToTensor``, ``ExtNormalize``).
  Native test (``main.py --test_only``, ``validate``): single scale, no flip, the network's logits at
  the input size, ``outputs.max(dim=1)[1]`` (argmax of the logits).
- VainF saves ``{"model_state": ..., "optimizer_state": ...}``; the weights are read from
  ``model_state`` (``torch.load(weights_only=True)``).

Both take ``width`` (the stem's channels, 64 in the papers; stages use 1, 2, 4, 8 times it, with
bottleneck expansion 4) and ``blocks`` (per stage; default from the backbone) so that tests and
benchmarks can build the same layout small.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

RESNET_BLOCKS = {"resnet101": (3, 4, 23, 3), "resnet50": (3, 4, 6, 3)}
#: Caffe mean of the DeepLab-v2 re-implementation (``configs/voc12.yaml``), BGR order, 0..255.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove any of ``prefixes`` (repeatedly, in order) from the start of every key.

    Two keys that become the same name (``module.base.x`` and ``x``: a duplicate that may disagree)
    are an error listing them; nothing is dropped, so that the strict load reports unknown keys.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    clashes: list[str] = []
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if name.startswith(p):
                    name = name[len(p):]
                    changed = True
        if name in out:
            clashes.append(f"{origin[name]} / {key}")
            continue
        out[name], origin[name] = value, key
    if clashes:
        shown = ", ".join(clashes[:6]) + (f" (+{len(clashes) - 6} more)" if len(clashes) > 6 else "")
        raise WsssBenchError(f"checkpoint holds the same weights under two names (prefixes "
                             f"{', '.join(repr(p) for p in prefixes)}): {shown}")
    return out


def fill_bn_counters(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add zero ``num_batches_tracked`` buffers the checkpoint lacks (Caffe conversions do)."""
    out = dict(state)
    for key, buf in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in out \
                and key[: -len("num_batches_tracked")] + "running_mean" in out:
            out[key] = torch.zeros_like(buf)
    return out


def _blocks(hparams: dict[str, Any], backbone: str) -> tuple[int, ...]:
    blocks = hparams.get("blocks")
    if blocks is None:
        return RESNET_BLOCKS[backbone]
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or any(b < 1 for b in blocks):
        raise WsssBenchError(f"blocks must be four positive counts, got {list(blocks)}")
    return blocks


# ----------------------------------------------------------------------------------------------
# DeepLab-v2 (kazuto1011/deeplab-pytorch layout)
# ----------------------------------------------------------------------------------------------


class ConvBN(nn.Sequential):
    """``conv`` (no bias) + ``bn`` (eps 1e-5) [+ ``relu``]: the unit of the MSRA ResNet layout."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, relu: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5))
        if relu:
            self.add_module("relu", nn.ReLU())


class MSRABottleneck(nn.Module):
    """Bottleneck with the stride on the first 1x1 (``reduce``), as in Caffe's ResNet."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, project: bool):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBN(cin, mid, 1, stride)
        self.conv3x3 = ConvBN(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBN(mid, cout, 1, relu=False)
        self.shortcut: nn.Module = ConvBN(cin, cout, 1, stride, relu=False) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class MSRAStage(nn.Sequential):
    def __init__(self, n: int, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        for i in range(n):
            self.add_module(f"block{i + 1}", MSRABottleneck(cin if i == 0 else cout, cout,
                                                            stride if i == 0 else 1, dilation, i == 0))


class MSRAStem(nn.Sequential):
    def __init__(self, cout: int):
        super().__init__()
        self.add_module("conv1", ConvBN(3, cout, 7, 2, 3))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class SummedASPP(nn.Module):
    """DeepLab-v2's ASPP: parallel dilated 3x3 convolutions (``c0..c3``) whose outputs are summed."""

    def __init__(self, cin: int, num_classes: int, rates: tuple[int, ...]):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, num_classes, 3, 1, padding=r, dilation=r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for branch in self.children():
            y = branch(x)
            out = y if out is None else out + y
        return out


class DeepLabV2Net(nn.Sequential):
    """Dilated ResNet (output stride 8) + summed ASPP; names of the public re-implementation."""

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (3, 4, 23, 3), width: int = 64,
                 rates: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        c = [width * 2 ** p for p in range(6)]
        self.add_module("layer1", MSRAStem(c[0]))
        self.add_module("layer2", MSRAStage(blocks[0], c[0], c[2], 1, 1))
        self.add_module("layer3", MSRAStage(blocks[1], c[2], c[3], 2, 1))
        self.add_module("layer4", MSRAStage(blocks[2], c[3], c[4], 1, 2))
        self.add_module("layer5", MSRAStage(blocks[3], c[4], c[5], 1, 4))
        self.add_module("aspp", SummedASPP(c[5], num_classes, rates))


class DeepLabV2Segmenter(Segmenter):
    """DeepLab-v2 (ResNet-101, ASPP rates 6/12/18/24) in kazuto1011/deeplab-pytorch's layout."""

    name = "deeplabv2"
    description = "DeepLab-v2 ResNet-101 (the segmenter of IRN/EDAM-style pipelines)"
    paper = "Chen et al., DeepLab (TPAMI 2018)"
    official_code = ("https://github.com/kazuto1011/deeplab-pytorch (libs/models/deeplabv2.py, "
                     "libs/models/msc.py, main.py test)")
    backbones: ClassVar[tuple[str, ...]] = ("resnet101", "resnet50")
    hyperparameters: ClassVar[dict[str, Any]] = {"width": 64, "blocks": None, "atrous_rates": [6, 12, 18, 24]}
    native = TestTimeSettings(name="native", scales=(1.0, 0.5, 0.75), flip=False, fusion="max",
                              fuse_at="logits", resize="float-scale-factor")
    channel_order = "BGR"
    normalize_dtype = "float64"
    mean = tuple(m / 255.0 for m in CAFFE_MEAN_BGR)  # type: ignore[assignment]
    std = (1 / 255.0, 1 / 255.0, 1 / 255.0)

    def build(self) -> nn.Module:
        self.model = DeepLabV2Net(self.num_classes, _blocks(self.hparams, self.backbone),
                                  int(self.hparams["width"]), tuple(int(r) for r in self.hparams["atrous_rates"]))
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.model is None:
            self.build()
        return fill_bn_counters(strip_prefix(state, ("module.", "base.")), self.model)


# ----------------------------------------------------------------------------------------------
# DeepLab-v3+ (torchvision ResNet layout + VainF/DeepLabV3Plus-Pytorch head)
# ----------------------------------------------------------------------------------------------


class TVBottleneck(nn.Module):
    """torchvision's ResNet-v1.5 bottleneck (stride on the 3x3): ``conv1..3``, ``bn1..3``, ``downsample``."""

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: bool):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)) \
            if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TVResNetTrunk(nn.Module):
    """torchvision's ResNet without ``avgpool``/``fc``; dilation replaces stride as torchvision's
    ``replace_stride_with_dilation`` does (the first block of a dilated stage keeps the previous
    dilation, later blocks use the new one)."""

    def __init__(self, blocks: tuple[int, ...], width: int = 64, dilate: tuple[bool, bool, bool] = (False, False, True)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, dilation = width, 1
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            stride = 1 if i == 0 else 2
            prev = dilation
            if i > 0 and dilate[i - 1]:
                dilation *= stride
                stride = 1
            layer = [TVBottleneck(cin, planes, stride, prev, stride != 1 or cin != planes * 4)]
            cin = planes * 4
            layer += [TVBottleneck(cin, planes, 1, dilation, False) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    pad = 0 if kernel == 1 else dilation
    return [nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ImagePooling(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPPv3(nn.Module):
    """DeepLab-v3's ASPP: 1x1, three dilated 3x3 and image pooling, concatenated and projected."""

    def __init__(self, cin: int, rates: tuple[int, ...], channels: int = 256):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(cin, channels, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, channels, 3, r)) for r in rates]
        branches.append(ImagePooling(cin, channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(channels * len(branches), channels, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """``project`` (low-level reduction), ``aspp``, ``classifier`` (3x3 fuse + 1x1 to classes)."""

    def __init__(self, cin: int, low_channels: int, num_classes: int, rates: tuple[int, ...],
                 channels: int = 256, reduce: int = 48):
        super().__init__()
        self.project = nn.Sequential(*_conv_bn_relu(low_channels, reduce, 1))
        self.aspp = ASPPv3(cin, rates, channels)
        self.classifier = nn.Sequential(*_conv_bn_relu(reduce + channels, channels, 3),
                                        nn.Conv2d(channels, num_classes, 1))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


class DeepLabV3PlusNet(nn.Module):
    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (3, 4, 23, 3), width: int = 64,
                 output_stride: int = 16, channels: int = 256, reduce: int = 48):
        super().__init__()
        if output_stride not in (8, 16):
            raise WsssBenchError(f"output_stride must be 8 or 16, got {output_stride}")
        dilate = (False, True, True) if output_stride == 8 else (False, False, True)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.backbone = TVResNetTrunk(blocks, width, dilate)
        self.classifier = DeepLabV3PlusHead(width * 32, width * 4, num_classes, rates, channels, reduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        return F.interpolate(self.classifier(low, high), size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3PlusSegmenter(Segmenter):
    """DeepLab-v3+ (ResNet-101, output stride 16) in VainF/DeepLabV3Plus-Pytorch's layout."""

    name = "deeplabv3plus"
    description = "DeepLab-v3+ ResNet-101 (torchvision backbone layout, VainF head)"
    paper = "Chen et al., DeepLab-v3+ (ECCV 2018)"
    official_code = "https://github.com/VainF/DeepLabV3Plus-Pytorch (network/_deeplab.py, network/modeling.py)"
    backbones: ClassVar[tuple[str, ...]] = ("resnet101", "resnet50")
    hyperparameters: ClassVar[dict[str, Any]] = {"width": 64, "blocks": None, "output_stride": 16,
                                                 "decoder_channels": 256, "low_level_channels": 48}
    native = TestTimeSettings(name="native", scales=(1.0,), flip=False, fusion="mean")

    def build(self) -> nn.Module:
        hp = self.hparams
        self.model = DeepLabV3PlusNet(self.num_classes, _blocks(hp, self.backbone), int(hp["width"]),
                                      int(hp["output_stride"]), int(hp["decoder_channels"]),
                                      int(hp["low_level_channels"]))
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return strip_prefix(state, ("module.",))
