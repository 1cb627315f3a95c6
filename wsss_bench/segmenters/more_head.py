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

from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.more import NUM_EXTRA_TOKENS, select_more_keys  # noqa: F401 - NUM_EXTRA_TOKENS re-exported
from wsss_bench.plugins import lazy_exports
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch, timm) is imported when the segmenter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(("LargeFOV", "MoReSegNet"), "wsss_bench.segmenters.nets.more")
                                    | dict.fromkeys(("VIT_MCT_CONFIGS", "MultiClassTokenViT", "ViTConfig", "tokens_to_map"),
                                                    "wsss_bench.methods.backbones.vit_mct"))

#: Prefixes of a MoRe checkpoint that the segmentation head does not read.
SEGMENTER_IGNORED_PREFIXES = ("classifier.", "aux_classifier.", "graph_layer.", "encoder.head.")


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
        from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS
        from wsss_bench.segmenters.nets.more import MoReSegNet

        self.model = MoReSegNet(self.num_classes, VIT_MCT_CONFIGS[self.backbone], width).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return select_more_keys(state, SEGMENTER_IGNORED_PREFIXES)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw LargeFOV logits ``[B, num_classes, H/16, W/16]`` of normalised images ``[B, 3, H, W]``."""
        if self.model is None:
            self.build()
        return self.model(images)
