"""CAM's network (IRN's ``net/resnet50_cam.py`` at inference): a timm ResNet without head, layer4
stride 1, and a 1x1 conv classifier without bias.

Imported by :class:`wsss_bench.methods.cam.CAMAdapter` when it builds its network, so that listing
the adapter (``wsss-bench methods``) imports neither torch nor timm; :mod:`wsss_bench.methods.cam`
re-exports these names.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss_bench.methods.cam import RESNETS


def build_resnet(name: str, last_stride: int = 1) -> nn.Module:
    """A timm ResNet without head (never downloads); layer4 stride set to ``last_stride`` without
    dilation, as IRN's ``strides=(2, 2, 2, 1)``."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers, channels, stem = RESNETS[name]
    net = ResNet(BasicBlock if block == "basic" else Bottleneck, list(layers), num_classes=0,
                 global_pool="", channels=channels, stem_width=stem)
    first = net.layer4[0]
    for mod in first.modules():
        if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1):
            mod.stride = (last_stride, last_stride)
    return net


class CAMNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.backbone = build_resnet(backbone)
        self.classifier = nn.Conv2d(self.backbone.num_features, num_classes, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level logits: the classifier after global average pooling (IRN ``Net.forward``)."""
        f = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(f).flatten(1)


def fill_batchnorm_counters(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add ``num_batches_tracked`` buffers a checkpoint lacks (unused at inference)."""
    out = dict(state)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(v)
    return out
