"""CAM: the ResNet-50 class activation map baseline, as IRN computes it.

Paper: Zhou et al., "Learning Deep Features for Discriminative Localization" (CVPR 2016); the
inference is IRN's (Ahn et al., CVPR 2019), official code jiwoon-ahn/irn.

Network (``net/resnet50.py``, ``net/resnet50_cam.py``): ResNet-50 with strides (2, 2, 2, 1), i.e.
layer4 stride 1 *without* dilation (output stride 16), the stride on each bottleneck's 3x3 conv,
batch norm always with its running statistics; ``classifier`` a 1x1 conv 2048 -> 20 without bias;
map ``relu(conv2d(features, classifier.weight))`` (``CAM.forward``). We build it with timm's ResNet
(same layer names and arithmetic as torchvision's, which IRN's file follows).

Native pipeline, exactly as ``step/make_cam.py`` with ``voc12/dataloader.py``
``VOC12ClassificationDatasetMSF`` runs it (``native`` below, carried out by
:mod:`wsss_bench.inference.tta`):

1. scales 1.0, 0.5, 1.5, 2.0; scale 1 is the image itself, every other scale is Pillow's bicubic
   ``Image.resize`` of the uint8 image to ``(np.round(h * s), np.round(w * s))`` (``misc/imutils.py``
   ``pil_rescale``; done with Pillow in the loader workers, ``resize="pil-bicubic"``,
   ``size_rounding="round"``);
2. ``TorchvisionNormalize`` (ImageNet mean / std on RGB / 255); the view and its mirror;
3. each view's map upsampled bilinearly (``align_corners=False``) to the image size rounded up to a
   multiple of 16 (``imutils.get_strided_up_size``; ``upsample="stride-padded"``,
   ``upsample_stride=16``), the mirror's flipped back and added, summed over scales, cropped to the
   image size;
4. the image's classes kept, each divided by its max + 1e-5.

Native rule: a constant background of 0.15 (``run_sample.py`` ``--cam_eval_thres``): ``eval_cam.py``
pads the maps with a 0.15 plane and takes the argmax, so a pixel is foreground where its top score is
strictly greater than 0.15 (ties to background).

IRN adds the mirror's map to the view's at the strided resolution, before upsampling, and normalises
the image in float64 before casting to float32; bilinear upsampling is linear and commutes with the
flip, so the two orders differ only in floating-point rounding. Measured against IRN's own code and
an independent reference (random weights, odd image sizes up to 333x500, ``tests/test_fidelity_cam.py``):
maps within 2e-5 of the maximum, native labels identical on every case measured.

Checkpoints: :func:`irn_checkpoint_filter` (IRN's layout with its duplicate module names, a plain
timm / torchvision ResNet state dict plus ``classifier.weight``, or our own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import Background, InferenceSettings, MethodAdapter
from wsss_bench.plugins import lazy_exports

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch, timm) is imported when the adapter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("build_resnet", "CAMNet", "fill_batchnorm_counters"), "wsss_bench.methods.nets.cam"))

# name -> (block, layers, channels, stem width)
RESNETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], int]] = {
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64),
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    # a narrow ResNet of the same structure for tests and the demo (~0.3 M parameters)
    "resnet-tiny": ("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
}


#: IRN's ``resnet50_cam.Net`` registers every backbone module twice more (``stage1`` = Sequential(conv1,
#: bn1, relu, maxpool, layer1), ``stage2..4`` = Sequential(layerN), ``backbone`` = ModuleList(stage1..4))
#: and the classifier once more (``newly_added`` = ModuleList([classifier])): prefix -> the name under
#: ``resnet50.`` (or ``classifier``) it duplicates.
IRN_DUPLICATES: dict[str, str] = {
    "stage1.0.": "resnet50.conv1.", "stage1.1.": "resnet50.bn1.", "stage1.4.": "resnet50.layer1.",
    "stage2.0.": "resnet50.layer2.", "stage3.0.": "resnet50.layer3.", "stage4.0.": "resnet50.layer4.",
    "newly_added.0.": "classifier.",
}


def irn_duplicate_of(key: str) -> str | None:
    """The ``resnet50.*`` / ``classifier.*`` key an IRN duplicate key copies, or None if ``key`` is not
    one of IRN's duplicate names (``backbone.<i>.`` is ``stage<i+1>.``)."""
    if key.startswith("backbone.") and key[len("backbone."):len("backbone.") + 1].isdigit():
        i, _, rest = key[len("backbone."):].partition(".")
        key = f"stage{int(i) + 1}.{rest}"
    for prefix, target in IRN_DUPLICATES.items():
        if key.startswith(prefix):
            return target + key[len(prefix):]
    return None


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN matching NaN (the copies of one diverged tensor are still copies)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


def irn_checkpoint_filter(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto :class:`CAMNet` names; three layouts are recognised:

    - IRN's ``resnet50_cam.Net`` (``step/train_cam.py`` saves ``model.module.state_dict()``): the
      network under ``resnet50.*`` plus ``classifier.weight``; the same tensors again under IRN's
      duplicate names (``stage1..4.*``, ``backbone.<i>.*``, ``newly_added.0.*``, see
      :data:`IRN_DUPLICATES`), which are checked against the tensor they copy and dropped;
    - a plain timm / torchvision ResNet state dict plus ``classifier.weight``; its ImageNet head
      ``fc.*`` is dropped;
    - our own layout (``backbone.*`` + ``classifier.weight``, as :class:`CAMNet` saves it).

    A ``module.`` prefix (a DataParallel copy) is stripped. Nothing else is dropped: a key outside
    these names, in the IRN layout, is an error listing it (in the other layouts the strict load
    lists it as unexpected), and so is a duplicate that differs from the tensor it copies or has no
    such tensor (IRN's own strict load would refuse a file whose modules disagree).
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if "classifier.weight" not in state:
        raise WsssBenchError("checkpoint has no 'classifier.weight' (a CAM classifier [C, D, 1, 1])")
    out: dict[str, torch.Tensor] = {"classifier.weight": state["classifier.weight"]}
    if any(k.startswith("resnet50.") for k in state):  # IRN layout
        unknown, differing = [], []
        for k, v in state.items():
            if k == "classifier.weight" or k.startswith("resnet50.fc."):
                continue
            if k.startswith("resnet50."):
                out["backbone." + k[len("resnet50."):]] = v
                continue
            original = irn_duplicate_of(k)
            if original is None:
                unknown.append(k)
            elif original not in state or not _same_tensor(state[original], v):
                differing.append(k)
        if unknown:
            raise WsssBenchError(f"checkpoint has keys that are neither IRN's resnet50_cam network nor its "
                                 f"duplicate copies: {_listed(unknown)}")
        if differing:
            raise WsssBenchError(f"checkpoint's duplicate copies differ from (or lack) the resnet50.* / "
                                 f"classifier tensors they copy: {_listed(differing)}")
        return out
    if "backbone.conv1.weight" in state:  # our own layout: the strict load names anything else
        return dict(state)
    for k, v in state.items():  # plain timm / torchvision ResNet
        if k.startswith("fc.") or k == "classifier.weight":
            continue
        out["backbone." + k] = v
    return out


class CAMAdapter(MethodAdapter):
    """Class activation maps of a ResNet classifier (IRN's CAM step)."""

    name = "cam"
    description = "Class activation maps of a ResNet-50 (layer4 stride 1) with a 1x1 conv classifier"
    paper = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016 (IRN's CAM step, CVPR 2019)"
    official_code = "jiwoon-ahn/irn net/resnet50_cam.py, step/make_cam.py"
    backbones = tuple(RESNETS)
    hyperparameters: ClassVar[dict] = {}
    native = InferenceSettings(
        scales=(1.0, 0.5, 1.5, 2.0), flip=True, resize="pil-bicubic", size_rounding="round", input_size=None,
        upsample="stride-padded", upsample_stride=16, align_corners=False, fuse_at="image",
        flip_fusion="sum", flip_fuse_at="output", scale_fusion="sum", normalization="max", eps=1e-5,
        background=Background("constant", 0.15))

    def build(self) -> nn.Module:
        from wsss_bench.methods.nets.cam import CAMNet

        self.model = CAMNet(self.backbone, self.num_classes).eval()
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from wsss_bench.methods.nets.cam import fill_batchnorm_counters

        return fill_batchnorm_counters(irn_checkpoint_filter(state), self.model)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        feats = self.model.features(views)
        w = self.model.classifier.weight[classes]
        return F.relu(F.conv2d(feats, w))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
