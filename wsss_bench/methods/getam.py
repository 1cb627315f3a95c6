"""GETAM: gradient-weighted element-wise transformer attention maps.

Paper: W. Sun, J. Zhang, Z. Liu, Y. Zhong, N. Barnes, "GETAM: Gradient-weighted Element-wise
Transformer Attention Map for Weakly-supervised Semantic Segmentation" (arXiv 2112.02841).
Official code: weixuansun/GETAM. Formula: ``DPT/DPT.py`` ``DPTSegmentationModel.generate_cam_2`` as
called by ``train_from_init.py`` (``start_layer=6``); network: ``DPT/DPT.py`` ``DPT.forward_cls`` and
``DPT/vit.py`` (``forward_vit``, ``ProjectReadout``, ``_make_vit_b16_backbone``).

Network (only the classification path; the DPT decoder is the segmenter's business, see
:mod:`wsss_bench.segmenters.getam_head`, which can reuse :class:`GETAMBackbone`):

- ``pretrained.model``: a timm ViT (ViT-B/16, DeiT-B/16, distilled DeiT-B/16 with two leading
  tokens, or the R50+ViT-B/16 hybrid; 384 x 384 position embedding, resized *bilinearly* to the
  input grid as GETAM's ``_resize_pos_embed`` does). The hybrid's ResNet-V2 trunk standardises its
  convolution weights with GETAM's bundled timm-0.4 formula ``(w - mean) / (std + 1e-5)``
  (:class:`~wsss_bench.methods.backbones.vit.StdConv2dTimm04`), not timm 1.x's.
- the output of the last block (GETAM hooks block 11 of 12, *before* the final ``norm``) goes through
  ``pretrained.act_postprocess4``: ``ProjectReadout`` (``0.project.0``: Linear 2D -> D on
  [patch token, class token], GELU), tokens to the patch grid (``1``, ``2``: parameter-free),
  a 1 x 1 conv (``3``) and a 3 x 3 stride-2 conv (``4``); then global average pooling and
  ``cls_head`` (Linear D -> classes). These ``act_postprocess4`` weights are on the path from the
  attention to the logits, so they are loaded and used (docs/methods.md only names ``cls_head``).
  The final ``norm`` is loaded (strict load) but, as in the official hook on block 11, not used.

Map, for each class c of the image (``generate_cam_2``): back-propagate c's raw logit; for every
block l >= ``start_block`` with softmax attention A_l [heads, N, N] and its gradient G_l,
``map_l = mean_h clamp(G_l * A_l, min=0) * mean_h clamp(G_l, min=0)``; sum over the blocks; take the
class-token row (row 0) over the patch columns (after the one or two leading tokens); ReLU; reshape
to the patch grid; upsample bilinearly with ``align_corners=True`` to the input size; divide by
max + 1e-5 per class (``train_from_init.py``: ``norm_cam = cam / (np.max(cam, (1, 2)) + 1e-5)``).
``start_block`` defaults to ``depth // 2`` (6 for 12 blocks, the official ``start_layer=6``; the last
half of the blocks for smaller ViTs). The maps scale with the squared gradient, so a weak classifier
gives maxima below the epsilon and normalised maps well under 1, exactly as the official code does.

That division is GETAM's and is done here, once per view: at native settings the runner must not
normalise again (``normalization="none"``, :data:`NATIVE_NORMALIZATION`). Under the standard protocol
the views' normalised maps are summed and the sum max-normalised: the raw maps' scale follows the
squared gradient, which varies from view to view by up to two orders of magnitude (the demo model's
per-view maxima over the four standard scales range from 9e-4 to 0.6), so a raw sum would be the map
of whichever view happens to have the largest gradient.

All classes of an image (and all views) go through one forward and one backward pass: the batch
holds ``V * K`` copies (view v, class k at row ``v * K + k``) and the sum over rows of each row's own
class logit is differentiated with ``torch.autograd.grad`` with respect to the captured attention
tensors only. Rows of a ViT batch never interact (LayerNorm is per token; the hybrid's group norm is
per image), so each row's attention gradient is exactly that of its own class, as in the official
one-class-at-a-time loop. Parameters never receive ``.grad`` and nothing survives the call
(``grad_batch`` caps the rows per pass).

Checkpoint (``filter_checkpoint``): the plain state dict of ``DPTSegmentationModel`` (an optional
``module.`` prefix on every key is stripped): ``pretrained.model.*`` (timm-0.4 names),
``pretrained.act_postprocess4.*``, ``cls_head.{weight,bias}``. Ignored, by name, the parts that the
classification path never reads: the DPT decoder (``scratch.*``, ``pretrained.act_postprocess1..3.*``,
``cam_module.*``) and the ViT's ImageNet head (``pretrained.model.head.*``, ``head_dist.*``,
``pre_logits.*``). Any other key is kept, so the strict load names it as unexpected.

Native settings: how GETAM prepares an image for its pseudo labels. ``train_from_init.py`` makes them
on the fly from the training crops (``myTool.get_data_from_chunk_v3``): the image read with OpenCV,
turned RGB and to float, resized with ``cv2.resize`` (bilinear, on the float image: no rounding, no
antialiasing) to a random long side in [0.9 x 256, 256 / 0.875], randomly flipped, normalised with the
ImageNet mean/std, randomly cropped (zero-padded) to ``--crop_size`` 256 x 256; the CAM is computed on
that 256 x 256 input, upsampled with ``align_corners=True`` to 256 x 256 and normalised there (after
PAMR, which the map leaves out). The only place where GETAM feeds a whole image to its network
(``myTool.validation``, ``test.py``) resizes it to a square (``cv2.resize(img, (256, 256))``). The
deterministic setting closest to both: the image resized to ``crop_size`` x ``crop_size`` by plain
bilinear interpolation of the normalised float image (``cv2.resize`` on a float image equals
``F.interpolate(mode="bilinear", align_corners=False)``), one view, no flip, the map normalised at
that size and then resized bilinearly to the image (GETAM never maps its CAMs back to the image: the
crop is its label space). ``crop_size`` is the crop the checkpoint was trained on: the default
(``-1``) is GETAM's 256 for the paper's backbones and 96 for the demo backbones (the side the demo
models are trained at, ``wsss_bench/demo/train.py``; at 256 the demo hybrid scores 29.7 mIoU on the
demo set against 34.9 at 96 and 35.7 at the images' own size). ``crop_size=0`` runs the image at its
own size instead. Background rule
``(1 - max) ** 32`` (``compute_seg_label_3``: argmax over the background plane and the class maps,
ties to the background). PAMR, saliency and label completion are not part of the map. The official
code computes its CAMs with the network in training mode; the classification path has no batch norm
and no dropout (drop rates 0; the hybrid's trunk uses group norm), so evaluation mode is the same. Note that the
official code only runs square inputs (it reshapes the token map to ``(h // 16, w // 16)`` and
resizes it to ``(w, h)``) and that its hybrid only runs sides divisible by 16 (the ResNet's "SAME"
padding gives ``ceil(side / 16)`` tokens, the position embedding ``side // 16``); on other inputs we
take the evident intent: the actual token grid, resized to ``(h, w)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import Background, InferenceSettings, MethodAdapter
from wsss_bench.plugins import lazy_exports

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch, timm) is imported when the adapter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("ProjectReadout", "GETAMBackbone", "build_getam_backbone", "GETAMNet", "getam_token_map", "normalise_max"),
    "wsss_bench.methods.nets.getam")
    | dict.fromkeys(("AttentionCapture", "build_vit", "embed_dim", "num_prefix_tokens", "tokens_to_grid", "vit_forward"),
                    "wsss_bench.methods.backbones.vit"))

#: GETAM resizes its position embedding bilinearly (``models/vision_transformer.py``).
GETAM_POS_MODE = "bilinear"
#: ``train_from_init.py`` ``--crop_size``: the side of the square inputs its pseudo labels are made on.
GETAM_CROP_SIZE = 256
#: The side the demo backbones are trained at (``wsss_bench/demo/train.py`` ``DEMO_MODELS["getam"]``):
#: their native crop.
DEMO_CROP_SIZE = 96
#: The paper's background power (``compute_seg_label_3``: ``(1 - max) ** 32``).
GETAM_BACKGROUND = Background("power", 32)
#: The adapter divides each map by its max + 1e-5 (GETAM's normalisation); at native settings the
#: runner leaves the maps as they are (``"none"``): dividing a second time would change the maps of a
#: weak classifier (maxima near the epsilon) a lot.
NATIVE_NORMALIZATION = "none"


def default_crop_size(backbone: str) -> int:
    """The crop a GETAM checkpoint of ``backbone`` was trained on: 256, or 96 for the demo backbones."""
    return DEMO_CROP_SIZE if backbone.endswith("_demo") else GETAM_CROP_SIZE


def getam_native_settings(crop_size: int) -> InferenceSettings:
    """GETAM's native pipeline (see the module docstring): the image resized to ``crop_size`` squared by
    float bilinear interpolation (``crop_size`` 0: at its own size), one view, no flip, the map (already
    at the input size, ``align_corners=True``, divided by its max + 1e-5 by the adapter) not normalised
    again, then resized bilinearly to the image; background ``(1 - max) ** 32``."""
    return InferenceSettings(
        scales=(1.0,), flip=False, resize="bilinear", size_rounding="round", input_size=crop_size or None,
        input_resize="bilinear", upsample="direct", align_corners=True,
        fuse_at="input" if crop_size else "image", flip_fusion="sum", scale_fusion="sum",
        normalization=NATIVE_NORMALIZATION, eps=1e-5, background=GETAM_BACKGROUND,
    )


def default_start_block(depth: int) -> int:
    """GETAM's first summed block: ``depth // 2`` (6 of 12 as in ``train_from_init.py``)."""
    return depth // 2


class GETAMAdapter(MethodAdapter):
    name: ClassVar[str] = "getam"
    description: ClassVar[str] = "Gradient-weighted element-wise attention maps of a ViT classifier"
    paper: ClassVar[str] = "Sun et al., GETAM, arXiv 2112.02841 (2021)"
    official_code: ClassVar[str] = "https://github.com/weixuansun/GETAM (DPT/DPT.py generate_cam_2)"
    backbones: ClassVar[tuple[str, ...]] = (
        "vit_hybrid", "vit_base", "deit_base", "deit_base_distilled", "vit_small", "vit_tiny", "vit_tiny_demo", "vit_hybrid_demo",
    )
    hyperparameters: ClassVar[dict[str, Any]] = {
        # first summed block; -1 = depth // 2 (blocks 6..11 of 12)
        "start_block": -1,
        # rows (view x class copies) per backward pass; 0 = all of an image's in one pass
        "grad_batch": 0,
        # native input: the image resized to crop_size x crop_size (GETAM's --crop_size); 0 = own size;
        # -1 = the backbone's training crop (256, or 96 for the *_demo backbones)
        "crop_size": -1,
    }
    native: ClassVar[InferenceSettings] = getam_native_settings(GETAM_CROP_SIZE)
    needs_grad: ClassVar[bool] = True

    def __init__(self, num_classes: int, backbone: str | None = None,
                 hparams: dict[str, Any] | None = None):
        super().__init__(num_classes, backbone, hparams)
        crop = self.hparams["crop_size"]
        if isinstance(crop, bool) or not isinstance(crop, int) or not -1 <= crop <= 8192:
            raise WsssBenchError(f"getam: crop_size must be an integer in -1..8192 (0 = the image's own size, "
                                 f"-1 = the backbone's training crop), got {crop!r}")
        self.crop_size = default_crop_size(self.backbone) if crop == -1 else crop
        self.native = getam_native_settings(self.crop_size)

    def build(self) -> nn.Module:
        from wsss_bench.methods.nets.getam import GETAMNet

        self.model = GETAMNet(self.backbone, self.num_classes).eval()
        n = len(self.model.pretrained.model.blocks)
        start = int(self.hparams["start_block"])
        start = default_start_block(n) if start < 0 else start
        if not 0 <= start < n:
            raise WsssBenchError(f"getam: start_block must be in 0..{n - 1} for {self.backbone}, got {start}")
        self.start_block = start
        if int(self.hparams["grad_batch"]) < 0:
            raise WsssBenchError("getam: grad_batch must be >= 0")
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return filter_getam_checkpoint(state)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        import torch

        if self.model is None:
            self.build()
        v, _, h, w = views.shape
        k = int(classes.numel())
        if k == 0:
            return views.new_zeros((v, 0, h, w))
        rows_views = torch.arange(v, device=views.device).repeat_interleave(k)
        rows_classes = classes.to(views.device).long().repeat(v)
        chunk = int(self.hparams["grad_batch"]) or v * k
        maps = []
        for lo in range(0, v * k, chunk):
            sel = slice(lo, min(lo + chunk, v * k))
            maps.append(self._maps_for_rows(views[rows_views[sel]], rows_classes[sel]))
        return torch.cat(maps, dim=0).reshape(v, k, h, w)

    def _maps_for_rows(self, x: torch.Tensor, row_classes: torch.Tensor) -> torch.Tensor:
        """One forward/backward for rows ``x`` [R, 3, h, w], row r explained for ``row_classes[r]``."""
        import torch

        from wsss_bench.methods.backbones.vit import AttentionCapture, num_prefix_tokens
        from wsss_bench.methods.nets.getam import getam_token_map

        model = self.model
        vit = model.pretrained.model
        blocks = range(self.start_block, len(vit.blocks))
        h, w = x.shape[-2:]
        with torch.enable_grad(), AttentionCapture(vit, blocks=blocks) as cap:
            x = x.detach().requires_grad_(True)  # a graph even if the weights are frozen
            logits, grid = model.classify(x)
            score = logits.gather(1, row_classes[:, None]).sum()
            attns = cap.attention_list()
            grads = torch.autograd.grad(score, attns)
            with torch.no_grad():
                token_map = getam_token_map([a.detach() for a in attns], list(grads), num_prefix_tokens(vit))
            del logits, score, attns, grads
            cap.clear()
        return self._to_input_size(token_map, grid, (h, w))

    @staticmethod
    def _to_input_size(token_map: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """Token map [R, P] -> [R, h, w]: the patch grid upsampled with ``align_corners=True`` and
        divided by its max + 1e-5 (``train_from_init.py``)."""
        import torch.nn.functional as F

        from wsss_bench.methods.nets.getam import normalise_max

        maps = token_map.reshape(-1, 1, grid[0], grid[1])
        return normalise_max(F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[:, 0])


#: Checkpoint keys of ``DPTSegmentationModel`` that the classification path never reads: the DPT decoder
#: (``scratch``, ``act_postprocess1..3``, GETAM's ``cam_module`` SE layer) and the ViT's ImageNet head.
IGNORED_PREFIXES = (
    "scratch.", "cam_module.", "pretrained.act_postprocess1.", "pretrained.act_postprocess2.",
    "pretrained.act_postprocess3.", "pretrained.model.head.", "pretrained.model.head_dist.",
    "pretrained.model.pre_logits.",
)


def filter_getam_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GETAM's ``DPTSegmentationModel`` state dict -> :class:`GETAMNet` names (pure function).

    A ``module.`` prefix on every key is stripped; the :data:`IGNORED_PREFIXES` are dropped by name;
    every other key is kept, so that the strict load lists anything unknown."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "cls_head.weight" not in state:
        raise WsssBenchError("not a GETAM checkpoint: no cls_head.weight")
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
