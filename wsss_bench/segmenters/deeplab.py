"""DeepLab-v2 and DeepLab-v3+ segmenters with ResNet backbones.

**DeepLab-v2** (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI 2018), in the layout of the PyTorch
re-implementation that IRN- and EDAM-style pipelines train (kazuto1011/deeplab-pytorch,
``libs/models/deeplabv2.py``, ``libs/models/resnet.py``, ``libs/models/msc.py``):

- checkpoint keys under ``base.`` (the ``MSC`` wrapper), optionally ``module.`` (DataParallel);
- ``layer1`` the stem: ``conv1.{conv,bn}`` (7x7/2, 64) and a 3x3/2 max-pool with ``ceil_mode``;
- ``layer2..layer5`` the ResNet stages (ResNet-101: 3, 4, 23, 3 blocks) of MSRA bottlenecks
  ``blockN.{reduce,conv3x3,increase,shortcut}.{conv,bn}``; the stride sits on ``reduce`` (the 1x1),
  ``shortcut`` exists in the first block of each stage only; ``layer4``/``layer5`` are dilated 2/4
  (output stride 8);
- ``aspp.c0..c3``: 3x3 convolutions with bias, dilations 6, 12, 18, 24, whose outputs are summed.
- Input: BGR, minus the Caffe mean (B 104.008, G 116.669, R 122.675), no scaling.
- Input arithmetic (``libs/datasets/base.py``): ``cv2.imread`` BGR as float32, ``image -= mean_bgr``
  (a float64 array: computed in float64, rounded once to float32): ``normalize_dtype="float64"``.
- Native test (``main.py test`` with ``MSC(scales=[0.5, 0.75])``, ``libs/models/msc.py``): the image
  itself, then ``F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)`` for p = 0.5,
  0.75 (size ``floor(H p)``, sampling step ``1/p``: ``resize="float-scale-factor"``); the pyramid's
  logits resized (by size) to the scale-1.0 logit size, pixel-wise max; upsampled to the image size,
  softmax, argmax (wsss-bench takes the argmax of the logits: the same class, the softmax being
  increasing; the fidelity test checks it pixel for pixel); no flip. The dense CRF (``main.py crf``)
  is a separate row (:data:`~wsss_bench.segmenters.base.DEEPLAB_CRF`) on the plain RGB image: the
  official ``crf`` command passes the mean-subtracted BGR image cast to uint8 (negative values wrap
  around), which wsss-bench does not reproduce.
- Checkpoints without ``num_batches_tracked`` buffers (Caffe conversions) are accepted: the buffers
  (a counter that evaluation never reads) are filled with zeros.

**DeepLab-v3+** (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018). No single canonical PyTorch layout exists; wsss-bench follows
the most widely used re-implementation, VainF/DeepLabV3Plus-Pytorch (``network/_deeplab.py``,
``network/modeling.py``), whose backbone is torchvision's ResNet layout:

- ``backbone.{conv1,bn1,layer1..layer4}`` exactly as ``torchvision.models.resnet101`` (no ``fc``);
  output stride 16 (``layer4`` dilated) or 8 (``layer3`` and ``layer4`` dilated);
- ``classifier.project.{0,1}``: 1x1 conv (no bias) 256 -> 48 + BN on ``layer1``'s output;
- ``classifier.aspp.convs.0`` (1x1), ``.1..3`` (3x3, dilations 6/12/18 at OS 16, 12/24/36 at OS 8),
  ``.4`` (image pooling: ``.4.1`` conv, ``.4.2`` BN), each conv without bias + BN + ReLU, 256 channels;
  ``classifier.aspp.project.{0,1}``: 1x1 conv 1280 -> 256 + BN (+ dropout);
- ``classifier.classifier.{0,1}``: 3x3 conv (no bias) 304 -> 256 + BN, ``.3``: 1x1 conv to the
  classes (with bias); the logits are upsampled bilinearly to the input size inside the network.
- Input: RGB, ImageNet mean/std in torchvision's float32 arithmetic (``ExtToTensor``, ``ExtNormalize``).
  Native test (``main.py --test_only``, ``validate``): single scale, no flip, the network's logits at
  the input size, ``outputs.max(dim=1)[1]`` (argmax of the logits).
- VainF saves ``{"model_state": ..., "optimizer_state": ...}``; the weights are read from
  ``model_state`` (``torch.load(weights_only=True)``).

Both take ``width`` (the stem's channels, 64 in the papers; stages use 1, 2, 4, 8 times it, with
bottleneck expansion 4) and ``blocks`` (per stage; default from the backbone) so that tests and
benchmarks can build the same layout small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.plugins import lazy_exports
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the network code (torch) is imported when a segmenter builds it; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("fill_bn_counters", "ConvBN", "MSRABottleneck", "MSRAStage", "MSRAStem", "SummedASPP", "DeepLabV2Net",
     "TVBottleneck", "TVResNetTrunk", "ImagePooling", "ASPPv3", "DeepLabV3PlusHead", "DeepLabV3PlusNet"),
    "wsss_bench.segmenters.nets.deeplab"))

RESNET_BLOCKS = {"resnet101": (3, 4, 23, 3), "resnet50": (3, 4, 6, 3)}
#: Caffe mean of the DeepLab-v2 re-implementation (``configs/voc12.yaml``), BGR order, 0..255.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove any of ``prefixes`` (repeatedly, in order) from the start of every key.

    Two keys that become the same name (``module.base.x`` and ``x``: a duplicate that may disagree)
    are an error listing them; nothing is dropped, so that the strict load reports unknown keys.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    clashes: list[str] = []
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if name.startswith(p):
                    name = name[len(p):]
                    changed = True
        if name in out:
            clashes.append(f"{origin[name]} / {key}")
            continue
        out[name], origin[name] = value, key
    if clashes:
        shown = ", ".join(clashes[:6]) + (f" (+{len(clashes) - 6} more)" if len(clashes) > 6 else "")
        raise WsssBenchError(f"checkpoint holds the same weights under two names (prefixes "
                             f"{', '.join(repr(p) for p in prefixes)}): {shown}")
    return out


def _label(backbone: str, hparams: dict[str, Any], default_width: int = 64) -> str:
    """``resnet101`` as built by default; ``resnet-w8-b1111`` for a resized one (width, blocks per stage)."""
    width, blocks = int(hparams.get("width", default_width)), hparams.get("blocks")
    if width == default_width and (blocks is None or tuple(int(b) for b in blocks) == RESNET_BLOCKS[backbone]):
        return backbone
    b = RESNET_BLOCKS[backbone] if blocks is None else tuple(int(x) for x in blocks)
    return f"resnet-w{width}-b{''.join(str(x) for x in b)}"


def _blocks(hparams: dict[str, Any], backbone: str) -> tuple[int, ...]:
    blocks = hparams.get("blocks")
    if blocks is None:
        return RESNET_BLOCKS[backbone]
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or any(b < 1 for b in blocks):
        raise WsssBenchError(f"blocks must be four positive counts, got {list(blocks)}")
    return blocks


class DeepLabV2Segmenter(Segmenter):
    """DeepLab-v2 (ResNet-101, ASPP rates 6/12/18/24) in kazuto1011/deeplab-pytorch's layout."""

    name = "deeplabv2"
    description = "DeepLab-v2 ResNet-101 (the segmenter of IRN/EDAM-style pipelines)"
    paper = "Chen et al., DeepLab (TPAMI 2018)"
    official_code = ("https://github.com/kazuto1011/deeplab-pytorch (libs/models/deeplabv2.py, "
                     "libs/models/msc.py, main.py test)")
    backbones: ClassVar[tuple[str, ...]] = ("resnet101", "resnet50")
    hyperparameters: ClassVar[dict[str, Any]] = {"width": 64, "blocks": None, "atrous_rates": [6, 12, 18, 24]}
    native = TestTimeSettings(name="native", scales=(1.0, 0.5, 0.75), flip=False, fusion="max",
                              fuse_at="logits", resize="float-scale-factor")
    channel_order = "BGR"
    normalize_dtype = "float64"
    mean = tuple(m / 255.0 for m in CAFFE_MEAN_BGR)  # type: ignore[assignment]
    std = (1 / 255.0, 1 / 255.0, 1 / 255.0)

    @property
    def backbone_label(self) -> str:
        return _label(self.backbone, self.hparams)

    def build(self) -> nn.Module:
        from wsss_bench.segmenters.nets.deeplab import DeepLabV2Net

        self.model = DeepLabV2Net(self.num_classes, _blocks(self.hparams, self.backbone),
                                  int(self.hparams["width"]), tuple(int(r) for r in self.hparams["atrous_rates"]))
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from wsss_bench.segmenters.nets.deeplab import fill_bn_counters

        if self.model is None:
            self.build()
        return fill_bn_counters(strip_prefix(state, ("module.", "base.")), self.model)


class DeepLabV3PlusSegmenter(Segmenter):
    """DeepLab-v3+ (ResNet-101, output stride 16) in VainF/DeepLabV3Plus-Pytorch's layout."""

    name = "deeplabv3plus"
    description = "DeepLab-v3+ ResNet-101 (torchvision backbone layout, VainF head)"
    paper = "Chen et al., DeepLab-v3+ (ECCV 2018)"
    official_code = "https://github.com/VainF/DeepLabV3Plus-Pytorch (network/_deeplab.py, network/modeling.py)"
    backbones: ClassVar[tuple[str, ...]] = ("resnet101", "resnet50")
    hyperparameters: ClassVar[dict[str, Any]] = {"width": 64, "blocks": None, "output_stride": 16,
                                                 "decoder_channels": 256, "low_level_channels": 48}
    native = TestTimeSettings(name="native", scales=(1.0,), flip=False, fusion="mean")

    @property
    def backbone_label(self) -> str:
        return _label(self.backbone, self.hparams)

    def build(self) -> nn.Module:
        from wsss_bench.segmenters.nets.deeplab import DeepLabV3PlusNet

        hp = self.hparams
        self.model = DeepLabV3PlusNet(self.num_classes, _blocks(hp, self.backbone), int(hp["width"]),
                                      int(hp["output_stride"]), int(hp["decoder_channels"]),
                                      int(hp["low_level_channels"]))
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return strip_prefix(state, ("module.",))
