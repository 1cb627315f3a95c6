"""AD-CAM's network and its attention arithmetic (see :mod:`wsss_bench.methods.adcam`).

Imported by :class:`wsss_bench.methods.adcam.ADCAMAdapter` when it builds its network (listing the
adapter imports no torch); :mod:`wsss_bench.methods.adcam` re-exports these names.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.adcam import ADCAM_POS_MODE
from wsss_bench.methods.backbones.vit import build_vit, embed_dim, tokens_to_grid, vit_forward

_ROW_FLOOR = 1e-12


class ADCAMNet(nn.Module):
    """A ViT with a patch-token classifier: CAM = ReLU(classifier(final normed patch tokens))."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.backbone = build_vit(backbone)
        self.classifier = nn.Conv2d(embed_dim(self.backbone), num_classes, kernel_size=1, bias=False)

    def classifier_map(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier scores on the patch grid [B, classes, gh, gw] (before ReLU)."""
        out = vit_forward(self.backbone, x, pos_mode=ADCAM_POS_MODE, final_norm=True)
        feats = tokens_to_grid(out.normed[:, out.num_prefix:], out.grid)
        return self.classifier(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image logits: global average pooling of the classifier map."""
        return self.classifier_map(x).mean(dim=(2, 3))


def mean_attention(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Softmax attention [B, H, N, N] per block -> mean over heads and blocks [B, N, N] (float32)."""
    if not attentions:
        raise WsssBenchError("ad-cam needs at least one attention block")
    return torch.stack([a.float().mean(dim=1) for a in attentions]).mean(dim=0)


def renormalise_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.sum(dim=-1, keepdim=True).clamp_min(_ROW_FLOOR)


def patch_attention(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Head/block-averaged attention [B, N, N] -> patch-to-patch A [B, P, P], rows summing to 1."""
    return renormalise_rows(attn[:, num_prefix:, num_prefix:])


def refine_attention(a: torch.Tensor) -> torch.Tensor:
    """Conservative refinement: ``A' = rownorm(A * (A A^T))`` for A [B, P, P]."""
    s = a @ a.transpose(-1, -2)
    return renormalise_rows(a * s)


def diffuse(cam: torch.Tensor, a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Random-walk diffusion ``CAM' = (A^T)^t CAM`` per class: cam [B, K, P], a [B, P, P].

    With row-stochastic ``a``, entry j of ``A^T c`` is ``sum_i a[i, j] c[i]``: patch i hands its
    activation to its neighbours j in proportion to its attention row.
    """
    if iterations < 0:
        raise WsssBenchError(f"ad-cam: iterations must be >= 0, got {iterations}")
    out = cam
    for _ in range(iterations):
        out = out @ a  # [B, K, P] @ [B, P, P]: out[b, k, j] = sum_i out[b, k, i] a[b, i, j]
    return out


def class_token_attention(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Row 0 (class token) of the averaged attention [B, N, N] over the patch columns: [B, P]."""
    return attn[:, 0, num_prefix:]


def direct_coupling(cam: torch.Tensor, cls_attn: torch.Tensor) -> torch.Tensor:
    """Pixel-wise product of the CAM [B, K, P] and the class-token attention map [B, P]."""
    return cam * cls_attn[:, None, :]


def normalise_max(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each map [..., P] by its maximum + eps."""
    return maps / (maps.amax(dim=-1, keepdim=True) + eps)
