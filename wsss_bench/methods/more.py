"""MoRe: localisation attention maps of a multi-class-token ViT, refined by graph category representation.

Paper: Z. Yang et al., "MoRe: Class Patch Attention Needs Regularization for Weakly Supervised Semantic
Segmentation", AAAI 2025. Official code: https://github.com/zwyang6/MoRe (files followed here:
``model/model_mal.py`` for the network and its outputs, ``model/GCA.py`` for the Graph Category
Representation module ``graph_layer``, ``model/backbone/mat_vit.py`` for the encoder,
``tools/infer_lam.py`` with ``utils/camutils.py:multi_scale_lam2`` for LAM inference and
``utils/camutils.py:multi_scale_cam2`` for the CAM).

What the official inference computes, and how it maps onto wsss-bench:

- The encoder is a ViT-B/16 with ``4 + K`` class tokens (VOC 24, COCO 84); the last 12 blocks' output
  is LayerNorm-ed; tokens ``4 .. 4+K-1`` are the class tokens, the rest the patch tokens.
- ``graph_layer`` refines the K class tokens against the (detached) patch tokens
  (:class:`GraphCategoryRepresentation`).
- LAM (``--map lam``, the default): ``einsum('bchw,bkc->bkhw', patch_map, refined_tokens)``, a raw dot
  product that **can be negative**. ``multi_scale_lam2`` upsamples it to the 448 x 448 input, fuses the
  image and its flip by max, sums scales and then min-max normalises each class
  (``lam + max(-lam)``, divided by ``max + 1e-5``) with **no ReLU**. :meth:`MoReAdapter.forward_maps`
  therefore returns the raw LAM, negative values included, and relies on the native
  ``normalization="minmax"`` (eps 1e-5) of the runner; under the standard protocol's max-normalisation
  the runner clamps negative values to 0. This relaxes the adapter contract's "non-negative" for
  ``map="lam"`` only.
- CAM (``--map cam``): ``conv2d(patch_map, classifier.weight)`` (``cam_only=True`` in
  ``network.forward``); ``multi_scale_cam2`` upsamples it bilinearly to the input size, fuses the flip
  by max and only then applies the ReLU. ReLU commutes with flip and max but not with the upsampling,
  so :meth:`MoReAdapter.forward_maps` returns the CAM already upsampled to the view size and ReLU-ed
  (non-negative). At the native scale 1.0 the view is the 448 x 448 input itself, so this is the
  official order exactly; at other scales (``--scales``) the official code upsamples each scale's grid
  straight to 448 x 448 while this adapter's map is upsampled to the view and then by the runner to
  448 x 448 (two bilinear steps; the LAM, which has no ReLU, is exact at every scale).
- Native settings (``tools/infer_lam.py``, ``infer_cam.py``): the image read as uint8 RGB and normalised
  to float (``datasets/transforms.py`` ``normalize_img``: ImageNet mean/std in 0..255 units); resized to
  448 x 448 with ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing); scales
  relative to 448 with sides ``int(s * 448)`` (``size_rounding="floor"``), default 1.0 only (the
  ``--refine_with_multiscale`` list is 1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0); each scale runs the image
  and its flip in one batch; maps upsampled to 448 x 448, the flip fused by **max**, scales summed,
  then per class ``m - min`` divided by ``max + 1e-5`` **at 448 x 448** (``fuse_at="input"``,
  ``normalization="minmax"``), and only then resized bilinearly to the label size; background where
  the top score of the image's classes is ``<= 0.5`` (``cam_to_label``, ``bkg_thre``).

Checkpoint: a state dict saved from ``DistributedDataParallel`` (``module.`` prefix, stripped if
present) with ``encoder.*`` (see :mod:`wsss_bench.methods.backbones.vit_mct`), ``classifier.weight``
[K, C, 1, 1], ``graph_layer.*`` (including ``_fc1``, built but unused by the official forward: loaded
so that the load stays strict). Ignored by name (:data:`IGNORED_PREFIXES`), as no localisation map
reads them: ``decoder.*`` (the LargeFOV segmentation head, see :mod:`wsss_bench.segmenters.more_head`),
``aux_classifier.*`` (the classifier on block -3 whose CAM makes the training-time pseudo labels of
``multi_scale_cam2``'s ``cam_aux``) and ``encoder.head.*`` (the timm ImageNet-style head of
``MATformer``, never called). Any other key is kept, so the strict load names it as unexpected.
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
    ("GraphCategoryRepresentation", "MoReNet", "lam_from_tokens"), "wsss_bench.methods.nets.more")
    | dict.fromkeys(("VIT_MCT_CONFIGS", "MultiClassTokenViT", "ViTConfig", "tokens_to_map"),
                    "wsss_bench.methods.backbones.vit_mct"))

#: MoRe's extra "regularisation" tokens before the class tokens (``x[:, 4:num_attri]`` in mat_vit.py).
NUM_EXTRA_TOKENS = 4

#: Prefixes of an official checkpoint that no MoRe localisation map reads.
IGNORED_PREFIXES = ("decoder.", "aux_classifier.", "encoder.head.")


def select_more_keys(state: dict[str, torch.Tensor], ignored: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Strip a leading ``module.`` (DistributedDataParallel) and drop keys under ``ignored`` prefixes.

    Every other key is kept, so that a strict load reports anything unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(ignored):
            continue
        if name in out:
            raise WsssBenchError(f"checkpoint holds {name!r} both with and without the 'module.' prefix")
        out[name] = value
    return out


class MoReAdapter(MethodAdapter):
    """MoRe's LAM (default) or the CAM of the same network; see the module docstring for the formulas."""

    name: ClassVar[str] = "more"
    description: ClassVar[str] = ("MoRe: multi-class-token ViT; localisation attention map of patch tokens "
                                  "and GCR-refined class tokens (or the CAM of its classifier)")
    paper: ClassVar[str] = ("Yang et al., MoRe: Class Patch Attention Needs Regularization for Weakly "
                            "Supervised Semantic Segmentation, AAAI 2025")
    official_code: ClassVar[str] = "https://github.com/zwyang6/MoRe"
    backbones: ClassVar[tuple[str, ...]] = ("vit_base_patch16", "vit_tiny_demo")
    hyperparameters: ClassVar[dict[str, Any]] = {"map": "lam"}
    native: ClassVar[InferenceSettings] = InferenceSettings(
        scales=(1.0,), flip=True, resize="bilinear", size_rounding="floor", input_size=448,
        input_resize="bilinear", upsample="direct", align_corners=False, fuse_at="input", flip_fusion="max",
        scale_fusion="sum", normalization="minmax", eps=1e-5, background=Background("constant", 0.5))

    MAPS: ClassVar[tuple[str, ...]] = ("lam", "cam")

    def __init__(self, num_classes: int, backbone: str | None = None,
                 hparams: dict[str, Any] | None = None):
        super().__init__(num_classes, backbone, hparams)
        self.hparams["map"] = str(self.hparams["map"]).lower()
        if self.hparams["map"] not in self.MAPS:
            raise WsssBenchError(f"method 'more': map must be one of {', '.join(self.MAPS)}, "
                                 f"got {self.hparams['map']!r}")
        if self.num_classes < 2:
            raise WsssBenchError("method 'more' needs at least 2 foreground classes (GCR keeps the top half)")

    def build(self) -> nn.Module:
        from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS
        from wsss_bench.methods.nets.more import MoReNet

        self.model = MoReNet(self.num_classes, VIT_MCT_CONFIGS[self.backbone]).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return select_more_keys(state, IGNORED_PREFIXES)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Maps for the requested classes.

        ``map="lam"``: the **raw** LAM ``[V, K, H/16, W/16]``, which can be negative; the official
        inference min-max normalises it without a ReLU, so this adapter leaves the sign to the runner's
        min-max (native settings; the standard protocol's max normalisation clamps negatives to 0).
        ``map="cam"``: the **raw** CAM ``[V, K, H/16, W/16]`` (the classifier on the patch map);
        ``multi_scale_cam2`` upsamples each view's CAM to 448 x 448 and only then applies the ReLU, which
        :meth:`activate` does in the runner at the fusion size (ReLU and bilinear upsampling do not
        commute; ReLU and the max over flips do).
        """
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.build()
        model = self.model
        classes = classes.to(device=views.device, dtype=torch.long)
        if self.hparams["map"] == "lam":
            return model.lam(views)[:, classes]
        _, patch_map = model.features(views)
        return F.conv2d(patch_map, model.classifier.weight[classes])

    def activate(self, maps: torch.Tensor) -> torch.Tensor:
        """The CAM's ReLU, after upsampling to the fusion size (``multi_scale_cam2``); the LAM has none."""
        import torch.nn.functional as F

        return F.relu(maps) if self.hparams["map"] == "cam" else maps
