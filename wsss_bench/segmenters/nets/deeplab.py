"""The DeepLab-v2 and DeepLab-v3+ networks (see :mod:`wsss_bench.segmenters.deeplab` for the layouts).

Imported by the segmenters when they build their networks (listing them imports no torch);
:mod:`wsss_bench.segmenters.deeplab` re-exports these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError


def fill_bn_counters(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add zero ``num_batches_tracked`` buffers the checkpoint lacks (Caffe conversions do)."""
    out = dict(state)
    for key, buf in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in out \
                and key[: -len("num_batches_tracked")] + "running_mean" in out:
            out[key] = torch.zeros_like(buf)
    return out


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
