"""CAM: the ResNet-50 class activation map baseline, as IRN computes it.

Paper: Zhou et al., "Learning Deep Features for Discriminative Localization" (CVPR 2016); the
inference follows Ahn et al., IRN (CVPR 2019), official code jiwoon-ahn/irn ``net/resnet50_cam.py``
(network: ResNet-50 with strides (2, 2, 2, 1), i.e. layer4 stride 1 *without* dilation, output
stride 16; ``classifier`` 1x1 conv 2048 -> 20 without bias; map ``relu(conv2d(features, W))``)
and ``step/make_cam.py`` (scales 1.0, 0.5, 1.5, 2.0, each with its flip summed, upsampled and summed
over scales, divided by max + 1e-5; CAM threshold 0.15).

One deviation, stated: IRN upsamples each scale's map to the image size rounded up to a multiple
of the stride and crops; we upsample to the image size directly (METHODS.md).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import Background, InferenceSettings, MethodAdapter

# name -> (block, layers, channels, stem width)
RESNETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], int]] = {
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64),
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    # a narrow ResNet of the same structure for tests and the demo (~0.3 M parameters)
    "resnet-tiny": ("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
}


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


def irn_checkpoint_filter(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an IRN ``resnet50_cam`` state dict, a plain timm/torchvision ResNet state dict plus
    ``classifier.weight``, or our own layout, onto :class:`CAMNet` names.

    IRN keeps each tensor twice: under ``resnet50.*`` and again under ``stage1..4.*``,
    ``backbone.<i>.*`` (ModuleLists) and ``newly_added.0.*``; only ``resnet50.*`` and
    ``classifier.weight`` are kept. An ImageNet ``fc.*`` head is dropped.
    """
    if "classifier.weight" not in state and "newly_added.0.weight" in state:
        state = {**state, "classifier.weight": state["newly_added.0.weight"]}
    if "classifier.weight" not in state:
        raise WsssBenchError("checkpoint has no 'classifier.weight' (a CAM classifier [C, D, 1, 1])")
    out: dict[str, torch.Tensor] = {"classifier.weight": state["classifier.weight"]}
    if any(k.startswith("resnet50.") for k in state):  # IRN layout
        for k, v in state.items():
            if k.startswith("resnet50.") and not k.startswith("resnet50.fc."):
                out["backbone." + k[len("resnet50."):]] = v
        return out
    if "backbone.conv1.weight" in state:  # our own layout
        return {k: v for k, v in state.items() if k.startswith(("backbone.", "classifier."))}
    for k, v in state.items():  # plain timm / torchvision ResNet
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(("fc.", "classifier.")):
            continue
        out["backbone." + k] = v
    return out


class CAMAdapter(MethodAdapter):
    """Class activation maps of a ResNet classifier (IRN's CAM step)."""

    name = "cam"
    description = "Class activation maps of a ResNet-50 (layer4 stride 1) with a 1x1 conv classifier"
    paper = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016 (IRN's CAM step, CVPR 2019)"
    official_code = "jiwoon-ahn/irn net/resnet50_cam.py, step/make_cam.py"
    backbones = tuple(RESNETS)
    hyperparameters: ClassVar[dict] = {}
    native = InferenceSettings(
        scales=(1.0, 0.5, 1.5, 2.0), flip=True, resize="pil-bicubic", size_rounding="round", input_size=None,
        upsample="stride-padded", upsample_stride=16, align_corners=False, fuse_at="image",
        flip_fusion="sum", scale_fusion="sum", normalization="max", eps=1e-5,
        background=Background("constant", 0.15))

    def build(self) -> nn.Module:
        self.model = CAMNet(self.backbone, self.num_classes).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return fill_batchnorm_counters(irn_checkpoint_filter(state), self.model)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        feats = self.model.features(views)
        w = self.model.classifier.weight[classes]
        return F.relu(F.conv2d(feats, w))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
