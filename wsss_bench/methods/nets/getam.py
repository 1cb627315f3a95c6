"""GETAM's classification path (``DPT.forward_cls``) and its map (``generate_cam_2``) as torch code.

Imported by :class:`wsss_bench.methods.getam.GETAMAdapter` when it builds its network (listing the
adapter imports no torch); :mod:`wsss_bench.methods.getam` re-exports these names, and GETAM's DPT
segmenter reuses :class:`GETAMBackbone` and :class:`ProjectReadout`.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import (
    build_vit,
    embed_dim,
    num_prefix_tokens,
    tokens_to_grid,
    vit_forward,
)
from wsss_bench.methods.getam import GETAM_POS_MODE


class ProjectReadout(nn.Module):
    """DPT's readout projection: concat(patch token, class token) -> Linear(2D, D) -> GELU.

    The readout is the first token only, also for the distilled DeiT (``DPT/vit.py``);
    ``start_index`` is where the patch tokens begin (1, or 2 with a distillation token).
    """

    def __init__(self, dim: int, start_index: int = 1):
        super().__init__()
        self.start_index = start_index
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.start_index:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


class GETAMBackbone(nn.Module):
    """GETAM's ``pretrained`` module: ``model`` (the timm ViT) and ``act_postprocess4``.

    ``act_postprocess4`` keeps the official indices: ``0`` readout, ``1``/``2`` parameter-free
    (transpose, unflatten to the grid), ``3`` 1 x 1 conv, ``4`` 3 x 3 stride-2 conv. The DPT
    segmenter adds ``act_postprocess1..3`` itself.
    """

    def __init__(self, backbone: str):
        super().__init__()
        self.model = build_vit(backbone)
        self.start_index = num_prefix_tokens(self.model)
        d = embed_dim(self.model)
        self.act_postprocess4 = nn.Sequential(
            ProjectReadout(d, self.start_index), nn.Identity(), nn.Identity(),
            nn.Conv2d(d, d, kernel_size=1), nn.Conv2d(d, d, kernel_size=3, stride=2, padding=1),
        )

    def forward_tokens(self, x: torch.Tensor, keep_blocks: tuple[int, ...] = (-1,)):
        """Token forward pass with GETAM's bilinear position-embedding resize (no final norm)."""
        return vit_forward(self.model, x, pos_mode=GETAM_POS_MODE, keep_blocks=keep_blocks,
                           final_norm=False)

    def postprocess4(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``act_postprocess4`` on the last block's tokens -> feature map [B, D, gh', gw']."""
        x = tokens_to_grid(self.act_postprocess4[0](tokens), grid)
        return self.act_postprocess4[4](self.act_postprocess4[3](x))


def build_getam_backbone(backbone: str) -> GETAMBackbone:
    """The ViT part of GETAM's network with official parameter names (for the DPT segmenter)."""
    return GETAMBackbone(backbone)


class GETAMNet(nn.Module):
    """GETAM's classification path: ``pretrained`` + ``cls_head`` (``DPT.forward_cls``)."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.pretrained = GETAMBackbone(backbone)
        self.cls_head = nn.Linear(embed_dim(self.pretrained.model), num_classes)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Logits [B, classes] and the patch grid of ``x``."""
        out = self.pretrained.forward_tokens(x, keep_blocks=(-1,))
        last = out.blocks[len(self.pretrained.model.blocks) - 1]
        feat = self.pretrained.postprocess4(last, out.grid)
        return self.cls_head(feat.mean(dim=(2, 3))), out.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[0]


def getam_token_map(attentions: list[torch.Tensor], gradients: list[torch.Tensor],
                    num_prefix: int) -> torch.Tensor:
    """GETAM's class-token map over patches, [B, P], from per-block attention and gradient.

    ``attentions[l]``, ``gradients[l]``: [B, heads, N, N] of the blocks to sum.
    ``sum_l mean_h relu(G*A) * mean_h relu(G)``, row 0, columns ``num_prefix:``, ReLU.
    """
    total = None
    for a, g in zip(attentions, gradients, strict=True):
        a, g = a.float(), g.float()
        m = (g * a).clamp(min=0).mean(dim=1) * g.clamp(min=0).mean(dim=1)
        total = m if total is None else total + m
    if total is None:
        raise WsssBenchError("GETAM needs at least one attention block")
    return torch.relu(total[:, 0, num_prefix:])


def normalise_max(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each [..., h, w] map by its maximum + eps."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + eps)
