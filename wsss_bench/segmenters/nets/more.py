"""MoRe's segmentation network: the multi-class-token ViT encoder and the LargeFOV decoder.

Imported by :class:`~wsss_bench.segmenters.more_head.MoReSegmenter` when it builds its network
(listing it imports no torch); :mod:`wsss_bench.segmenters.more_head` re-exports these names.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss_bench.methods.backbones.vit_mct import MultiClassTokenViT, ViTConfig, tokens_to_map
from wsss_bench.methods.more import NUM_EXTRA_TOKENS


class LargeFOV(nn.Module):
    """MoRe's ``decoder.LargeFOV`` (``model/decoder/conv_head.py``), parameter names ``conv6/7/8``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 512, dilation: int = 5):
        super().__init__()
        self.conv6 = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu6 = nn.ReLU(inplace=True)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu7 = nn.ReLU(inplace=True)
        self.conv8 = nn.Conv2d(width, num_classes, 1, bias=False)
        for m in (self.conv6, self.conv7, self.conv8):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv8(self.relu7(self.conv7(self.relu6(self.conv6(x)))))


class MoReSegNet(nn.Module):
    """``encoder`` (4 + K class tokens, K foreground classes) and ``decoder`` of MoRe's ``network``."""

    def __init__(self, num_classes: int, config: ViTConfig | None = None, decoder_width: int = 512):
        super().__init__()
        cfg = config or ViTConfig()
        self.encoder = MultiClassTokenViT(NUM_EXTRA_TOKENS + num_classes - 1, cfg)
        self.decoder = LargeFOV(cfg.embed_dim, num_classes, width=decoder_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, H/16, W/16]`` (background first)."""
        _, patches, grid = self.encoder(images)
        return self.decoder(tokens_to_map(patches, grid))
