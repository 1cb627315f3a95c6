"""ResNet-38, the wide residual network of PSA and EDAM (``resnet38d``).

Structure, module names, strides and dilations follow the official model files
(jiwoon-ahn/psa ``network/resnet38d.py``, allenwu97/EDAM ``network/resnet38d.py``; the network is
Wu, Shen and van den Hengel's "Wider or Deeper: Revisiting the ResNet Model for Visual
Recognition", model A1 in its output-stride-8 form). The code is our own.

Layout (channels at ``width=1``)::

    conv1a                      3x3, 3 -> 64                              stride 1
    b2, b2_1, b2_2              basic blocks 64 -> 128                    stride 2 (in b2)
    b3, b3_1, b3_2              basic blocks 128 -> 256                   stride 2 (in b3)
    b4, b4_1 .. b4_5            basic blocks 256 -> 512                   stride 2 (in b4)
    b5, b5_1, b5_2              basic blocks 512 -> 1024 (mid 512)        dilation 2 (b5's first conv: 1)
    b6                          bottleneck 1024 -> 2048, dropout 0.3      dilation 4
    b7                          bottleneck 2048 -> 4096, dropout 0.5      dilation 4
    bn7                         batch norm of the 4096 output channels

Output stride 8. Blocks are pre-activation: every block starts with ``bn_branch2a`` + ReLU of its
input; the shortcut ``conv_branch1`` (1x1, present only where the shape changes) reads that
activated input. A basic block's residual branch is ``conv_branch2a`` (3x3) -> ``bn_branch2b1`` ->
ReLU -> ``conv_branch2b1`` (3x3); a bottleneck's is ``conv_branch2a`` (1x1, out/4) ->
``bn_branch2b1`` -> ReLU -> dropout -> ``conv_branch2b1`` (3x3, out/2) -> ``bn_branch2b2`` -> ReLU ->
dropout -> ``conv_branch2b2`` (1x1, out). Every convolution is bias-free.

PSA's classifier applies a ReLU after ``bn7``; EDAM's copy does not (``final_relu=False``). Batch
norm always runs in eval mode (both code bases freeze it, also while training).

``width`` multiplies every channel count so tests and the demo can build a narrow network with the
same structure and names (``width=0.125``: 8 .. 512 channels).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError

#: (name, kind, in, mid, out, stride, first_dilation, dilation, dropout) at width 1, in forward order.
#: ``kind`` "basic" = PSA's ``ResBlock``, "bottleneck" = ``ResBlock_bot`` (mid unused: out/4, out/2).
RESNET38_BLOCKS: tuple[tuple[str, str, int, int, int, int, int, int, float], ...] = (
    ("b2", "basic", 64, 128, 128, 2, 1, 1, 0.0),
    ("b2_1", "basic", 128, 128, 128, 1, 1, 1, 0.0),
    ("b2_2", "basic", 128, 128, 128, 1, 1, 1, 0.0),
    ("b3", "basic", 128, 256, 256, 2, 1, 1, 0.0),
    ("b3_1", "basic", 256, 256, 256, 1, 1, 1, 0.0),
    ("b3_2", "basic", 256, 256, 256, 1, 1, 1, 0.0),
    ("b4", "basic", 256, 512, 512, 2, 1, 1, 0.0),
    ("b4_1", "basic", 512, 512, 512, 1, 1, 1, 0.0),
    ("b4_2", "basic", 512, 512, 512, 1, 1, 1, 0.0),
    ("b4_3", "basic", 512, 512, 512, 1, 1, 1, 0.0),
    ("b4_4", "basic", 512, 512, 512, 1, 1, 1, 0.0),
    ("b4_5", "basic", 512, 512, 512, 1, 1, 1, 0.0),
    ("b5", "basic", 512, 512, 1024, 1, 1, 2, 0.0),
    ("b5_1", "basic", 1024, 512, 1024, 1, 2, 2, 0.0),
    ("b5_2", "basic", 1024, 512, 1024, 1, 2, 2, 0.0),
    ("b6", "bottleneck", 1024, 0, 2048, 1, 4, 4, 0.3),
    ("b7", "bottleneck", 2048, 0, 4096, 1, 4, 4, 0.5),
)

STEM_CHANNELS = 64
OUT_CHANNELS = 4096
OUTPUT_STRIDE = 8


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels`` at width multiplier ``width`` (rounded, at least 4)."""
    return max(4, int(round(channels * width)))


class BasicBlock(nn.Module):
    """PSA's ``ResBlock``: pre-activation block of two 3x3 convolutions."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int = 1, dilation: int = 1):
        super().__init__()
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y


class BottleneckBlock(nn.Module):
    """PSA's ``ResBlock_bot``: pre-activation 1x1 -> 3x3 -> 1x1 block with dropout; always projects."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return shortcut + y


class ResNet38(nn.Module):
    """ResNet-38 (``resnet38d``) feature extractor: image [N,3,H,W] -> features [N,C,H/8,W/8].

    ``final_relu``: apply ReLU after ``bn7`` (PSA) or not (EDAM). ``width``: channel multiplier.
    """

    def __init__(self, width: float = 1.0, final_relu: bool = False):
        super().__init__()
        if not width > 0:
            raise WsssBenchError(f"ResNet-38 width must be positive, got {width}")
        self.width = float(width)
        self.final_relu = bool(final_relu)
        self.conv1a = nn.Conv2d(3, scaled(STEM_CHANNELS, width), 3, padding=1, bias=False)
        self.block_names: list[str] = []
        for name, kind, cin, mid, cout, stride, first_dil, dil, drop in RESNET38_BLOCKS:
            if kind == "basic":
                block: nn.Module = BasicBlock(scaled(cin, width), scaled(mid, width), scaled(cout, width),
                                              stride=stride, first_dilation=first_dil, dilation=dil)
            else:
                block = BottleneckBlock(scaled(cin, width), scaled(cout, width), stride=stride,
                                        dilation=dil, dropout=drop)
            self.add_module(name, block)
            self.block_names.append(name)
        self.out_channels = scaled(OUT_CHANNELS, width)
        self.bn7 = nn.BatchNorm2d(self.out_channels)
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1a(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        x = self.bn7(x)
        return F.relu(x) if self.final_relu else x

    def train(self, mode: bool = True) -> ResNet38:
        """Switch dropout to ``mode`` but keep every batch norm in eval mode (as PSA/EDAM do)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


def filter_psa_imagenet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PSA's ImageNet ResNet-38 initialisation (the MXNet ``ilsvrc-cls_rna-a1_cls1000`` weights as
    converted by ``convert_mxnet_to_torch`` in psa ``network/resnet38d.py``) -> a :class:`ResNet38`
    state dict.

    The converted file already uses our names; it lacks the batch-norm ``num_batches_tracked``
    counters (filled with 0: unused in eval mode) and may carry the ImageNet classifier
    (``linear1000.*``) or a ``module.`` prefix, both removed. Every other key is kept, so a strict
    load still reports anything that does not belong to the backbone.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("linear1000.") or key.startswith("fc1000."):
            continue
        out[key] = value
    return add_missing_bn_counters(out)


def add_missing_bn_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``<bn>.num_batches_tracked = 0`` for every batch norm whose ``running_var`` is present.

    Checkpoints written before PyTorch 0.4.1, or converted from MXNet, have no such counter; it
    only matters for momentum-free training, never for inference.
    """
    out = dict(state)
    for key in list(state):
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out
