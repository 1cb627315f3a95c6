"""MoRe's single-stage segmentation head: the ``decoder`` LargeFOV on the ViT patch tokens.

Paper: Z. Yang et al., "MoRe: Class Patch Attention Needs Regularization for Weakly Supervised Semantic
Segmentation", AAAI 2025. Official code: https://github.com/zwyang6/MoRe. Files followed:
``model/model_mal.py`` (``seg = self.decoder(_x4)``: the head reads the final LayerNorm-ed patch tokens
of the multi-class-token encoder as a ``[B, C, H/16, W/16]`` map), ``model/decoder/conv_head.py``
(``LargeFOV``) and ``tools/infer_seg_voc.py`` (the native test-time protocol).

LargeFOV (DeepLab-LargeFOV's fc6/fc7/fc8): ``conv6`` 3x3 dilation 5 (C -> 512), ReLU, ``conv7`` 3x3
dilation 5 (512 -> 512), ReLU, ``conv8`` 1x1 (512 -> classes incl. background); no biases, padding
equal to the dilation, so the logits keep the patch grid.

The checkpoint is the one :class:`wsss_bench.methods.more.MoReAdapter` loads (``module.`` prefix,
stripped if present); this segmenter keeps ``encoder.*`` and ``decoder.*`` and ignores
``classifier.*``, ``aux_classifier.*``, ``graph_layer.*`` and the encoder's unused ``head.*``.

Native protocol (``tools/infer_seg_voc.py``): the image normalised by ``datasets/transforms.py
normalize_img`` (``(x - 255 mean) / (255 std)`` in float64 from the uint8 image, stored as float32:
``normalize_dtype="float64"``); each scale ``s`` of 1.0, 1.25, 1.5 resizes the normalised float image
with ``F.interpolate(size=(int(448 s),) * 2, mode="bilinear", align_corners=False)``; the view and its
flip run in one batch; both logits are upsampled bilinearly to the label size, the flip's flipped back
and **summed**; the scales are fused by **max**; the prediction is the argmax of the fused logits
(dense CRF on their softmax, with the RGB image, is the script's separate ``crf_proc``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS, MultiClassTokenViT, ViTConfig, tokens_to_map
from wsss_bench.methods.more import NUM_EXTRA_TOKENS, select_more_keys
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

#: Prefixes of a MoRe checkpoint that the segmentation head does not read.
SEGMENTER_IGNORED_PREFIXES = ("classifier.", "aux_classifier.", "graph_layer.", "encoder.head.")


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


class MoReSegmenter(Segmenter):
    """MoRe's LargeFOV segmentation head on the patch tokens of the MoRe checkpoint (entry point ``more``)."""

    name: ClassVar[str] = "more"
    description: ClassVar[str] = "MoRe's LargeFOV decoder on the multi-class-token ViT's patch tokens"
    paper: ClassVar[str] = ("Yang et al., MoRe: Class Patch Attention Needs Regularization for Weakly "
                            "Supervised Semantic Segmentation, AAAI 2025")
    official_code: ClassVar[str] = "https://github.com/zwyang6/MoRe (tools/infer_seg_voc.py)"
    backbones: ClassVar[tuple[str, ...]] = ("vit_base_patch16", "vit_tiny_demo")
    #: ``decoder_width``: LargeFOV's channels (512 in MoRe; smaller only for tests and benchmarks).
    hyperparameters: ClassVar[dict[str, Any]] = {"decoder_width": 512}
    native: ClassVar[TestTimeSettings] = TestTimeSettings(
        name="native", scales=(1.0, 1.25, 1.5), flip=True, fusion="max", flip_fusion="sum",
        fuse_at="image", input_size=448, align_corners=False, resize="float-size")
    normalize_dtype: ClassVar[str] = "float64"

    def build(self) -> nn.Module:
        width = int(self.hparams["decoder_width"])
        if width < 1:
            raise WsssBenchError(f"segmenter 'more': decoder_width must be positive, got {width}")
        self.model = MoReSegNet(self.num_classes, VIT_MCT_CONFIGS[self.backbone], width).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return select_more_keys(state, SEGMENTER_IGNORED_PREFIXES)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw LargeFOV logits ``[B, num_classes, H/16, W/16]`` of normalised images ``[B, 3, H, W]``."""
        if self.model is None:
            self.build()
        return self.model(images)
