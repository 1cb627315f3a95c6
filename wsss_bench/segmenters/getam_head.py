"""GETAM's segmentation branch: the DPT decoder on the ViT of the GETAM checkpoint.

Paper: W. Sun et al., "GETAM: Gradient-weighted Element-wise Transformer Attention Map for
Weakly-supervised Semantic Segmentation" (arXiv 2112.02841); official code weixuansun/GETAM, files
followed: ``DPT/DPT.py`` (``DPT.forward`` / ``forward_seg``, ``DPTSegmentationModel``, ``SELayer``),
``DPT/blocks.py`` (``_make_scratch``, ``FeatureFusionBlock_custom``, ``ResidualConvUnit_custom``,
``Interpolate``), ``DPT/vit.py`` (``forward_vit``, ``ProjectReadout``, ``_make_vit_b16_backbone``,
``_make_vit_b_rn50_backbone``) and ``test.py`` (the native test).

Network (``DPTSegmentationModel(num_classes=20, ...)``, 21 output classes with background):

- ``pretrained.model``: the timm ViT (built by :func:`wsss_bench.methods.getam.build_getam_backbone`,
  the same module the GETAM method adapter uses), position embedding resized bilinearly; the
  outputs of four blocks (hooks ``[2, 5, 8, 11]`` for ViT/DeiT-B; for a ``d``-block ViT
  ``[d/4-1, d/2-1, 3d/4-1, d-1]``) before the final norm. For the R50 hybrid, layers 1 and 2 are the
  outputs of the ResNet's ``stages[0]``/``stages[1]`` and only blocks 8 and 11 are read.
- ``pretrained.act_postprocess{1..4}``: ``0`` ``ProjectReadout`` (Linear 2D -> D + GELU on
  [patch, class token]), ``1``/``2`` parameter-free (transpose, unflatten), ``3`` 1x1 conv D -> f_i,
  then ``4``: ConvTranspose 4x4/4 (layer 1), ConvTranspose 2x2/2 (layer 2), none (layer 3), 3x3/2
  conv (layer 4); ``f = [96, 192, 384, 768]`` for ViT-B (``[D/8, D/4, D/2, D]`` in general). The
  hybrid's ``act_postprocess1/2`` are identities (no parameters).
- ``scratch.layer{1..4}_rn``: 3x3 convs (no bias) f_i -> 256; ``scratch.refinenet{4..1}``:
  ``FeatureFusionBlock_custom`` with BN (``resConfUnit1``, ``resConfUnit2``: ReLU, conv, BN, ReLU,
  conv, BN, plus the input; add the skip, upsample x2 bilinear ``align_corners=True``,
  ``out_conv`` 1x1); ``cam_module`` (GETAM's ``SELayer``: two 3x3 convs with a ReLU between,
  squeeze-excitation ``fc`` 256 -> 16 -> 256, sigmoid, plus the input);
  ``scratch.output_conv``: 3x3 conv (no bias) + BN + ReLU + dropout, 1x1 conv to the classes, x2
  bilinear upsampling with ``align_corners=True``: logits at the input size.
- The DPT needs the input size to be a multiple of 32 (the stride-2 layer-4 conv and the x2
  upsamplings must meet); :meth:`GETAMSegmenter.logits` pads the normalised input with zeros (the
  mean colour) at the bottom and right to the next multiple of 32 and crops the logits back. The
  native sizes (256, 320, 480) need no padding.

Native test (``test.py``): ``cv2.imread`` (uint8 BGR), ``cv2.resize(img, (n, n))`` (``INTER_LINEAR``
on the uint8 image) to 256, 320 and 480 (expressed as ``input_size=160`` at scales 1.6, 2.0, 3.0;
``resize="opencv-uint8"``: wsss-bench calls OpenCV itself, in the loader workers), BGR -> RGB,
``(x / 255 - mean) / std`` in float64 (NumPy) then float32 (``normalize_dtype="float64"``), no flip,
logits upsampled to the image size (``align_corners=False``), ``(o_256 + o_320 + o_480) / 3``, argmax.
Its dense CRF (``tool/imutils.py crf_inference_inf``, t=20, Gaussian sxy 3 compat 3, bilateral sxy 83
srgb 5 compat 4) on the softmax of that mean is :data:`GETAM_CRF`, used by ``native+crf``, given the
BGR image as the official script does (``crf_image="BGR"``).

Checkpoint: the plain state dict of ``DPTSegmentationModel`` (``module.`` stripped when present);
``cls_head.*`` and the ViT's ImageNet ``head``/``head_dist``/``pre_logits`` are ignored, every other
key is loaded strictly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import VIT_SPECS, embed_dim, tokens_to_grid
from wsss_bench.methods.getam import ProjectReadout, build_getam_backbone
from wsss_bench.refine import CRFParams
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

#: Dense CRF of GETAM's ``test.py`` (``crf_inference_inf(img, probs, t=20)``).
GETAM_CRF = CRFParams(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=83.0, bilateral_srgb=5.0,
                      bilateral_compat=4.0, iterations=20)
HYBRID = "vit_hybrid"
IGNORED_PREFIXES = ("cls_head.", "pretrained.model.head.", "pretrained.model.head_dist.",
                    "pretrained.model.pre_logits.")


def default_hooks(depth: int) -> tuple[int, int, int, int]:
    """Blocks read by the DPT: ``[2, 5, 8, 11]`` for 12 blocks, quarters of the depth in general."""
    if depth < 4 or depth % 4:
        raise WsssBenchError(f"the DPT reads four evenly spaced blocks; depth {depth} is not a multiple of 4")
    q = depth // 4
    return (q - 1, 2 * q - 1, 3 * q - 1, 4 * q - 1)


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


class GETAMSegmenter(Segmenter):
    """GETAM's end-to-end segmentation output (the DPT branch of the same checkpoint)."""

    name = "getam"
    description = "GETAM's DPT segmentation branch (single-stage, same checkpoint as the GETAM method)"
    paper = "Sun et al., GETAM (arXiv 2112.02841)"
    official_code = "https://github.com/weixuansun/GETAM (DPT/DPT.py, DPT/blocks.py, DPT/vit.py, test.py)"
    backbones: ClassVar[tuple[str, ...]] = tuple(
        b for b in ("vit_hybrid", "vit_base", "deit_base", "deit_base_distilled", "vit_tiny_demo") if b in VIT_SPECS)
    hyperparameters: ClassVar[dict[str, Any]] = {"features": 256, "hooks": None, "pad_to": 32}
    native = TestTimeSettings(name="native", scales=(1.6, 2.0, 3.0), input_size=160, flip=False, fusion="mean",
                              resize="opencv-uint8", crf_image="BGR")
    native_crf = GETAM_CRF
    normalize_dtype = "float64"

    def build(self) -> nn.Module:
        hooks = self.hparams["hooks"]
        self.model = GETAMDPT(self.backbone, self.num_classes, int(self.hparams["features"]),
                              None if hooks is None else tuple(int(h) for h in hooks))
        self.model.eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        if not any(k.startswith("scratch.output_conv.") for k in state):
            raise WsssBenchError("not a GETAM DPT checkpoint: no scratch.output_conv.* (the segmentation branch)")
        return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            self.build()
        m = int(self.hparams["pad_to"])
        h, w = images.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(images, (0, pw, 0, ph)) if ph or pw else images
        return self.model(x)[..., :h, :w]
