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

from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.plugins import lazy_exports
from wsss_bench.refine import CRFParams
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch, timm) is imported when the segmenter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("ResidualConvUnit", "FusionBlock", "SqueezeExcite", "OutputHead", "GETAMDPT"),
    "wsss_bench.segmenters.nets.getam_dpt")
    | dict.fromkeys(("VIT_SPECS", "embed_dim", "tokens_to_grid"), "wsss_bench.methods.backbones.vit")
    | dict.fromkeys(("ProjectReadout", "build_getam_backbone"), "wsss_bench.methods.nets.getam"))

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


class GETAMSegmenter(Segmenter):
    """GETAM's end-to-end segmentation output (the DPT branch of the same checkpoint)."""

    name = "getam"
    description = "GETAM's DPT segmentation branch (single-stage, same checkpoint as the GETAM method)"
    paper = "Sun et al., GETAM (arXiv 2112.02841)"
    official_code = "https://github.com/weixuansun/GETAM (DPT/DPT.py, DPT/blocks.py, DPT/vit.py, test.py)"
    #: names of :data:`wsss_bench.methods.backbones.vit.VIT_SPECS` (a test checks they are)
    backbones: ClassVar[tuple[str, ...]] = ("vit_hybrid", "vit_base", "deit_base", "deit_base_distilled", "vit_tiny_demo")
    hyperparameters: ClassVar[dict[str, Any]] = {"features": 256, "hooks": None, "pad_to": 32}
    native = TestTimeSettings(name="native", scales=(1.6, 2.0, 3.0), input_size=160, flip=False, fusion="mean",
                              resize="opencv-uint8", crf_image="BGR")
    native_crf = GETAM_CRF
    normalize_dtype = "float64"

    def build(self) -> nn.Module:
        from wsss_bench.segmenters.nets.getam_dpt import GETAMDPT

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
        import torch.nn.functional as F

        if self.model is None:
            self.build()
        m = int(self.hparams["pad_to"])
        h, w = images.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(images, (0, pw, 0, ph)) if ph or pw else images
        return self.model(x)[..., :h, :w]
