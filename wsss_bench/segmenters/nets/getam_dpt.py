"""GETAM's DPT segmentation branch as torch modules (see :mod:`wsss_bench.segmenters.getam_head`).

Imported by :class:`~wsss_bench.segmenters.getam_head.GETAMSegmenter` when it builds its network
(listing it imports no torch); :mod:`wsss_bench.segmenters.getam_head` re-exports these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import embed_dim, tokens_to_grid
from wsss_bench.methods.nets.getam import ProjectReadout, build_getam_backbone
from wsss_bench.segmenters.getam_head import HYBRID, default_hooks


class ResidualConvUnit(nn.Module):
    """``ResidualConvUnit_custom`` with BN: ReLU, conv1, bn1, ReLU, conv2, bn2, plus the input."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(F.relu(x)))
        return self.bn2(self.conv2(F.relu(y))) + x


class FusionBlock(nn.Module):
    """``FeatureFusionBlock_custom``: add the refined skip, refine, upsample x2, 1x1 ``out_conv``."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class SqueezeExcite(nn.Module):
    """GETAM's ``SELayer`` (``cam_module``): ``body`` (3x3, ReLU, 3x3), channel gate ``fc``, plus the input."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        gate = self.fc(y.mean(dim=(2, 3)))
        return y * gate[:, :, None, None] + x


class OutputHead(nn.Sequential):
    def __init__(self, features: int, num_classes: int):
        super().__init__(nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                         nn.ReLU(True), nn.Dropout(0.1), nn.Conv2d(features, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), scale_factor=2, mode="bilinear", align_corners=True)


class GETAMDPT(nn.Module):
    """``pretrained`` (ViT + ``act_postprocess1..4``), ``scratch`` and ``cam_module``."""

    def __init__(self, backbone: str, num_classes: int, features: int = 256,
                 hooks: tuple[int, ...] | None = None):
        super().__init__()
        self.pretrained = build_getam_backbone(backbone)
        vit = self.pretrained.model
        d = embed_dim(vit)
        self.hybrid = backbone == HYBRID
        self.hooks = tuple(hooks) if hooks is not None else default_hooks(len(vit.blocks))
        if len(self.hooks) != 4 or any(not 0 <= h < len(vit.blocks) for h in self.hooks):
            raise WsssBenchError(f"hooks must be four block indices of a {len(vit.blocks)}-block ViT, "
                                 f"got {list(self.hooks)}")
        start = self.pretrained.start_index
        if self.hybrid:
            widths = [256, 512, d, d]
            self.pretrained.act_postprocess1 = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
            self.pretrained.act_postprocess2 = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
        else:
            widths = [d // 8, d // 4, d // 2, d]
            self.pretrained.act_postprocess1 = nn.Sequential(
                ProjectReadout(d, start), nn.Identity(), nn.Identity(), nn.Conv2d(d, widths[0], 1),
                nn.ConvTranspose2d(widths[0], widths[0], 4, stride=4))
            self.pretrained.act_postprocess2 = nn.Sequential(
                ProjectReadout(d, start), nn.Identity(), nn.Identity(), nn.Conv2d(d, widths[1], 1),
                nn.ConvTranspose2d(widths[1], widths[1], 2, stride=2))
        self.pretrained.act_postprocess3 = nn.Sequential(
            ProjectReadout(d, start), nn.Identity(), nn.Identity(), nn.Conv2d(d, widths[2], 1))
        # act_postprocess4 (readout, 1x1 conv D -> D, 3x3/2 conv) comes with GETAMBackbone
        self.scratch = nn.Module()
        for i, w in enumerate(widths, start=1):
            self.scratch.add_module(f"layer{i}_rn", nn.Conv2d(w, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            self.scratch.add_module(f"refinenet{i}", FusionBlock(features))
        self.scratch.add_module("output_conv", OutputHead(features, num_classes))
        self.cam_module = SqueezeExcite(features)

    def _post(self, seq: nn.Sequential, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = tokens_to_grid(seq[0](tokens), grid)
        for m in list(seq)[3:]:
            x = m(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.pretrained.model
        stage_out: dict[int, torch.Tensor] = {}
        handles = []
        if self.hybrid:
            stages = vit.patch_embed.backbone.stages
            for i in (0, 1):
                handles.append(stages[i].register_forward_hook(
                    lambda m, inp, out, i=i: stage_out.__setitem__(i, out)))
        try:
            out = self.pretrained.forward_tokens(x, keep_blocks=self.hooks)
        finally:
            for h in handles:
                h.remove()
        grid = out.grid
        p = self.pretrained
        if self.hybrid:
            l1, l2 = stage_out[0], stage_out[1]
        else:
            l1 = self._post(p.act_postprocess1, out.blocks[self.hooks[0]], grid)
            l2 = self._post(p.act_postprocess2, out.blocks[self.hooks[1]], grid)
        l3 = self._post(p.act_postprocess3, out.blocks[self.hooks[2]], grid)
        l4 = self._post(p.act_postprocess4, out.blocks[self.hooks[3]], grid)
        s = self.scratch
        path = s.refinenet4(s.layer4_rn(l4))
        path = s.refinenet3(path, s.layer3_rn(l3))
        path = s.refinenet2(path, s.layer2_rn(l2))
        path = s.refinenet1(path, s.layer1_rn(l1))
        return s.output_conv(self.cam_module(path))
