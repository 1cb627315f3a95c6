"""EDAM: Embedded Discriminative Attention Mechanism (Wu et al., CVPR 2021).

The pseudo-label maps are the masks of EDAM's Discriminative Activation (DA) layer on a ResNet-38,
as computed by ``Net.forward_cam`` in allenwu97/EDAM ``network/resnet38_EDAM_cls.py`` and fused by
its ``infer_cls.py``:

1. features: ResNet-38 (``resnet38d``) without the final ReLU after ``bn7``, output stride 8
   (:class:`~wsss_bench.methods.backbones.resnet38.ResNet38` with ``final_relu=False``);
2. DA layer: ``mask_layer``, a 3x3 convolution (padding 1, no bias) from the 4096 feature channels
   to ``num_classes + 1`` channels (VOC 21, COCO 81, synthetic 6);
3. per pixel, the channel vector is L2-normalised (``F.normalize`` over channels, eps 1e-12) and
   its absolute value taken; channel ``c`` is foreground class ``c`` (0-based, VOC 0..19), the
   last channel is never read.

Native pipeline, exactly as ``infer_cls.py`` with ``voc12/data.py`` ``VOC12ClsDatasetMSF`` runs it
(``native`` below, carried out by :mod:`wsss_bench.inference.tta`):

1. scales 1, 0.5, 1.5, 2.0, each Pillow's bicubic ``Image.resize`` of the uint8 image to
   ``(round(w * s), round(h * s))`` (Python's ``round``, half to even; at scale 1 Pillow returns the
   image unchanged), done with Pillow in the loader workers (``resize="pil-bicubic"``,
   ``size_rounding="round"``);
2. ``resnet38d.Normalize`` (ImageNet mean / std on RGB / 255); each view and its mirror: 8 inputs;
3. each input's masks upsampled bilinearly (``align_corners=False``) straight to the image size
   (``upsample="direct"``), the mirrors' flipped back, all 8 summed;
4. each class map divided by its maximum with no epsilon (``eps=0``; a map that is zero everywhere,
   NaN in EDAM's division, is zero here), only the image's classes kept.

Native rule: the constant background ``theta`` (``--theta``, default 0.5; its ``eval.py`` sweeps 0.40
to 0.58): ``--out_cam_pred`` puts ``theta`` in plane 0 of a [21, H, W] array, the class maps in planes
``c + 1`` (zeros elsewhere), and takes the argmax, so a pixel is foreground where its top score is
strictly greater than ``theta`` (ties to background).

EDAM normalises the image in float64 before casting to float32 and adds the 8 maps one by one; we
normalise in float32 and add each view to its mirror first, which differs only in floating-point
rounding. Measured against EDAM's own code and an independent reference (random weights, odd image
sizes up to 333x500, ``tests/test_fidelity_edam.py``): maps within 3e-6 of the maximum; native labels
identical except where two classes tie to the last bit (1 pixel of 105,375 in one case).

The collaborative multi-attention module (``d_d``, ``embedding``, ``trans_list``, ``fc_list``) is used
in training only and ignored here.

Backbones: ``resnet38`` is the paper's network; ``resnet38-w<k>`` is the same structure with every
channel count multiplied by ``k`` (``resnet38-w0.125``: 8..512 channels, for tests and the demo).
The ``width`` hyper-parameter, when positive, overrides the name's multiplier.

Checkpoint: EDAM's released state dict (plain, no ``module.`` prefix). :func:`filter_edam_checkpoint`
drops only the keys of the four training-only modules; everything inference uses (``conv1a`` ..
``bn7``, ``mask_layer.weight``) is loaded strictly, and any other key is an error listing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import Background, InferenceSettings, MethodAdapter
from wsss_bench.plugins import lazy_exports

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch) is imported when the adapter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(("da_maps", "EDAMNet"), "wsss_bench.methods.nets.edam")
                                    | dict.fromkeys(("ResNet38", "add_missing_bn_counters"),
                                                    "wsss_bench.methods.backbones.resnet38"))

#: Prefixes of EDAM's training-only modules (collaborative multi-attention), never used at inference.
EDAM_TRAINING_ONLY_PREFIXES = ("d_d.", "embedding.", "trans_list.", "fc_list.")

EDAM_NATIVE = InferenceSettings(
    scales=(1.0, 0.5, 1.5, 2.0), flip=True, resize="pil-bicubic", size_rounding="round", input_size=None,
    upsample="direct", align_corners=False, fuse_at="image", flip_fusion="sum", scale_fusion="sum",
    normalization="max", eps=0.0, background=Background("constant", 0.5),
)


def backbone_width(backbone: str) -> float:
    """The channel multiplier named by a backbone string: ``resnet38`` 1.0, ``resnet38-w0.125`` 0.125."""
    if backbone == "resnet38":
        return 1.0
    prefix = "resnet38-w"
    if backbone.startswith(prefix):
        try:
            width = float(backbone[len(prefix):])
        except ValueError:
            width = -1.0
        if width > 0:
            return width
    raise WsssBenchError(f"edam: cannot read a width from backbone {backbone!r} (expected resnet38-w<k>)")


def filter_edam_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EDAM's released state dict -> :class:`EDAMNet` names.

    Drops the training-only keys (``d_d.*``, ``embedding.*``, ``trans_list.*``, ``fc_list.*``),
    strips a ``module.`` prefix if a DataParallel copy was saved, and adds the batch-norm
    ``num_batches_tracked`` counters that old files lack. Any other key is kept, so the strict load
    names it as unexpected.
    """
    from wsss_bench.methods.backbones.resnet38 import add_missing_bn_counters

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(EDAM_TRAINING_ONLY_PREFIXES):
            continue
        out[key] = value
    return add_missing_bn_counters(out)


class EDAMAdapter(MethodAdapter):
    """EDAM's DA masks on ResNet-38 (allenwu97/EDAM ``network/resnet38_EDAM_cls.py``, ``infer_cls.py``)."""

    name: ClassVar[str] = "edam"
    description: ClassVar[str] = (
        "EDAM: L2-normalised, absolute Discriminative Activation masks of a 3x3 conv on ResNet-38")
    paper: ClassVar[str] = ("Wu et al., Embedded Discriminative Attention Mechanism for Weakly "
                            "Supervised Semantic Segmentation, CVPR 2021")
    official_code: ClassVar[str] = "https://github.com/allenwu97/EDAM"
    backbones: ClassVar[tuple[str, ...]] = ("resnet38", "resnet38-w0.25", "resnet38-w0.125", "resnet38-w0.0625")
    hyperparameters: ClassVar[dict[str, Any]] = {
        # background constant of the native rule (infer_cls.py --theta, default 0.5)
        "theta": 0.5,
        # channel multiplier; 0 = the backbone name's (resnet38: 1, resnet38-w0.125: 0.125)
        "width": 0.0,
    }
    native: ClassVar[InferenceSettings] = EDAM_NATIVE

    def __init__(self, num_classes: int, backbone: str | None = None,
                 hparams: dict[str, Any] | None = None):
        super().__init__(num_classes, backbone, hparams)
        width = float(self.hparams["width"])
        if width < 0:
            raise WsssBenchError(f"edam: width must be positive (or 0 for the backbone's), got {width}")
        # record the width actually built
        self.hparams["width"] = width if width > 0 else backbone_width(str(self.backbone))
        theta = float(self.hparams["theta"])
        if not 0.0 <= theta <= 1.0:
            raise WsssBenchError(f"edam: theta must be in [0, 1], got {theta}")
        # the instance's native rule uses its own theta
        self.native = EDAM_NATIVE.replace(background=Background("constant", theta))

    def build(self) -> nn.Module:
        from wsss_bench.methods.nets.edam import EDAMNet

        self.model = EDAMNet(self.num_classes, width=float(self.hparams["width"])).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return filter_edam_checkpoint(state)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            self.build()
        assert self.model is not None
        import torch

        classes = classes.to(device=views.device, dtype=torch.long)
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
            raise WsssBenchError(
                f"edam: class indices must be in 0..{self.num_classes - 1}, got {classes.tolist()}")
        maps = self.model(views)
        return maps.index_select(1, classes)
