"""EDAM's network at inference: ResNet-38 (no final ReLU) + the Discriminative Activation layer.

Imported by :class:`wsss_bench.methods.edam.EDAMAdapter` when it builds its network (listing the
adapter imports no torch); :mod:`wsss_bench.methods.edam` re-exports these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.methods.backbones.resnet38 import ResNet38


def da_maps(features: torch.Tensor, mask_weight: torch.Tensor) -> torch.Tensor:
    """EDAM's DA masks: |L2-normalise_channels(conv3x3(features, mask_weight))|, all channels.

    ``features`` [N, C, h, w], ``mask_weight`` [num_classes + 1, C, 3, 3] -> [N, num_classes + 1, h, w]
    (EDAM ``network/resnet38_EDAM_cls.py``, ``forward_cam``).
    """
    mask = F.conv2d(features, mask_weight, padding=1)
    return F.normalize(mask, p=2.0, dim=1).abs()


class EDAMNet(ResNet38):
    """ResNet-38 (no final ReLU) + the DA layer ``mask_layer``: EDAM's ``Net`` at inference.

    Subclassing the backbone keeps EDAM's flat names (``conv1a``, ``b2`` .. ``bn7``,
    ``mask_layer``), so its checkpoint needs no renaming.
    """

    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__(width=width, final_relu=False)
        self.mask_layer = nn.Conv2d(self.out_channels, num_classes + 1, 3, padding=1, bias=False)
        nn.init.xavier_uniform_(self.mask_layer.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ResNet-38 features [N, C, H/8, W/8] (``bn7`` output, no ReLU)."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All DA masks [N, num_classes + 1, H/8, W/8]."""
        return da_maps(self.features(x), self.mask_layer.weight)
