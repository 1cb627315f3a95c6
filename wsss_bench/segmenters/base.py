"""The plug-in interface of final-stage segmenters, and their test-time settings.

A segmenter adapter is the final-stage twin of :class:`wsss_bench.methods.base.MethodAdapter`:
it owns its network (:meth:`Segmenter.build`), how a checkpoint in the network's public layout
maps onto that network (:meth:`Segmenter.filter_checkpoint`, a pure key-renaming function, then a
strict load in :meth:`Segmenter.load_checkpoint`), and ONE override point,
:meth:`Segmenter.logits`, that turns a batch of normalised images into raw per-class logits.
Views (scales, flip), upsampling to the image size, fusion, the optional dense CRF and scoring are
done by :mod:`wsss_bench.segmenters.tta` and :mod:`wsss_bench.segmenters.runner` under a
:class:`TestTimeSettings`, identically for every segmenter.

Writing a segmenter (for example MoRe's ``decoder`` head, ``segmenters/more_head.py``)::

    class MoReSegmenter(Segmenter):
        name = "more"                       # the entry-point name
        description = "MoRe's LargeFOV decoder on the ViT patch tokens"
        paper = "Yang et al., AAAI 2025"
        official_code = "https://github.com/zwyang6/MoRe (tools/infer_seg_voc.py)"
        backbones = ("vit_base_patch16",)   # first = the paper's; tests may add tiny ones
        hyperparameters = {...}             # recorded in every record; overridable via hparams
        native = TestTimeSettings(name="native", scales=(1.0, 1.25, 1.5), flip=True,
                                  flip_fusion="sum", fusion="max", input_size=448)

        def build(self) -> nn.Module:       # random init, never downloads; set self.model
            ...
        def filter_checkpoint(self, state):  # official names -> self.model's names (pure)
            ...
        def logits(self, images):           # [B,3,h,w] normalised -> [B,C,h',w'] raw logits
            ...

Contract of the override point, :meth:`Segmenter.logits`: ``images`` float [B, 3, h, w], already
normalised with the class attributes :attr:`~Segmenter.mean` / :attr:`~Segmenter.std` (in 0..1
units) in :attr:`~Segmenter.channel_order` (arithmetic: :attr:`~Segmenter.normalize_dtype`);
returns float logits [B, C, h', w'] where
``C = num_classes`` counts ALL classes including background (VOC 21, COCO 81, synthetic 6), at
any resolution (the protocol upsamples them bilinearly). No softmax, no resizing to the input.

Adapters are found through the entry-point group ``wsss_bench.segmenters``; see
:mod:`wsss_bench.segmenters.registry`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD
from wsss_bench.plugins import load_checkpoint_strict, resolve_backbone, resolve_hparams
from wsss_bench.refine import CRFParams

if TYPE_CHECKING:
    import torch
    from torch import nn

#: View-fusion rules of :class:`TestTimeSettings`.
FUSIONS = ("softmax-mean", "mean", "sum", "max")
#: Flip-pair fusion rules (applied to logits, before the scales are fused).
FLIP_FUSIONS = ("sum", "mean", "max")
#: How a view is made from the image (see :class:`TestTimeSettings`).
RESIZES = ("float-size", "float-scale-factor", "opencv-uint8")
#: Arithmetic of the input normalisation (see :attr:`Segmenter.normalize_dtype`).
NORMALIZE_DTYPES = ("float32", "float64")

#: Dense-CRF parameters of the DeepLab-v2 PyTorch re-implementation (kazuto1011/deeplab-pytorch,
#: ``configs/voc12.yaml``/``libs/utils/crf.py``) that MoRe's ``tools/infer_seg_voc.py`` also uses:
#: 10 iterations, Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3 compat 4.
DEEPLAB_CRF = CRFParams(gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
                        bilateral_compat=4.0, iterations=10)


@dataclass(frozen=True)
class TestTimeSettings:
    """How a segmenter is run on one image (the test-time protocol).

    - ``name``: a label stored in records (``"standard"``, ``"native"``, ``"standard+crf"``).
    - ``scales``: rescale factors. A view at scale ``s`` of an ``H x W`` image is
      ``floor(H s) x floor(W s)`` (at least 1), or, with ``input_size``, ``floor(input_size s)`` square
      (MoRe's ``int(448 * sc)``, GETAM's 256/320/480 as ``input_size=160`` at 1.6/2.0/3.0).
    - ``resize``: how a view is made (a view of the image's own size is the image itself):

      - ``"float-size"``: ``F.interpolate(x, size=view size, mode="bilinear", align_corners=False)`` of
        the normalised float image (sampling step ``in / out``; MoRe's ``infer_seg_voc.py``, the
        standard protocol);
      - ``"float-scale-factor"``: ``F.interpolate(x, scale_factor=s, mode="bilinear",
        align_corners=False)`` of the normalised float image (size ``floor(H s)``, sampling step
        ``1 / s``: the DeepLab-v2 re-implementation's ``MSC``); not with ``input_size``;
      - ``"opencv-uint8"``: ``cv2.resize(image, (w, h))`` (``INTER_LINEAR``, fixed-point) of the uint8
        image, normalised afterwards (GETAM's ``test.py``); made in the loader workers.
    - ``flip``: also run the horizontal flip of every scale; its logits are flipped back.
    - ``fusion``: how the views' outputs, each upsampled to the fusion size, are combined:
      ``"softmax-mean"`` softmax over classes per view, then mean (the output is probabilities);
      ``"mean"``, ``"sum"``, ``"max"`` of logits (the output is logits).
    - ``flip_fusion``: ``None`` (the flipped views are ordinary views for ``fusion``) or
      ``"sum"``/``"mean"``/``"max"``: each scale's view and its flip are first combined on logits,
      then the scales with ``fusion`` (MoRe: flip sum, then max over scales).
    - ``fuse_at``: ``"image"`` (views are upsampled to the image size, then fused) or ``"logits"``
      (views are resized to the logit size of the scale-1.0 view, fused there, and the result is
      upsampled to the image size, as the DeepLab-v2 re-implementation's ``MSC`` does).
    - ``align_corners``: of the bilinear upsampling of logits.
    - ``crf``: ``None``, or dense-CRF parameters applied to the fused probabilities (softmax of fused
      logits) with the original image (:func:`wsss_bench.refine.dense_crf`); the prediction is the
      argmax of the CRF marginals. A CRF run is always a separately labelled row.
    - ``crf_image``: the channel order of the image given to the CRF, ``"RGB"`` or ``"BGR"`` (GETAM's
      ``test.py`` passes OpenCV's BGR image; the lattice of the bilateral filter depends on it).
    """

    __test__ = False  # not a pytest test class despite its name

    name: str = "standard"
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True
    fusion: str = "softmax-mean"
    flip_fusion: str | None = None
    fuse_at: str = "image"
    input_size: int | None = None
    align_corners: bool = False
    crf: CRFParams | None = None
    resize: str = "float-size"
    crf_image: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or any(not math.isfinite(s) or s <= 0 for s in self.scales):
            raise WsssBenchError(f"scales must be positive, got {list(self.scales)}")
        if self.fusion not in FUSIONS:
            raise WsssBenchError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.flip_fusion is not None and self.flip_fusion not in FLIP_FUSIONS:
            raise WsssBenchError(f"flip_fusion must be None or one of {', '.join(FLIP_FUSIONS)}, "
                                 f"got {self.flip_fusion!r}")
        if self.fuse_at not in ("image", "logits"):
            raise WsssBenchError(f"fuse_at must be 'image' or 'logits', got {self.fuse_at!r}")
        if self.fuse_at == "logits" and 1.0 not in self.scales:
            raise WsssBenchError("fuse_at='logits' needs scale 1.0 among the scales")
        if self.input_size is not None and self.input_size < 1:
            raise WsssBenchError(f"input_size must be positive, got {self.input_size}")
        if self.resize not in RESIZES:
            raise WsssBenchError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.resize == "float-scale-factor" and self.input_size is not None:
            raise WsssBenchError("resize='float-scale-factor' rescales the image itself: it takes no input_size")
        if self.crf_image not in ("RGB", "BGR"):
            raise WsssBenchError(f"crf_image must be 'RGB' or 'BGR', got {self.crf_image!r}")

    def replace(self, **changes: Any) -> TestTimeSettings:
        return dataclasses.replace(self, **changes)

    def with_crf(self, params: CRFParams = DEEPLAB_CRF) -> TestTimeSettings:
        """The same protocol plus a dense CRF, named ``<name>+crf``."""
        return dataclasses.replace(self, name=f"{self.name}+crf", crf=params)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["crf"] = None if self.crf is None else self.crf.to_dict()
        return d


#: The shared protocol (issue 9): scales 0.5..1.75 with flip, softmax then mean, no CRF.
STANDARD_TEST_SETTINGS = TestTimeSettings()


class Segmenter:
    """Base class of final-stage segmenter adapters.

    Subclasses set the class attributes and implement :meth:`build` and :meth:`logits` (and
    :meth:`filter_checkpoint` when the public layout differs from the module's names).

    Constructor arguments: ``num_classes`` is the number of ALL classes including background
    (VOC 21, COCO 81, synthetic 6) -- unlike method adapters, which count foreground classes;
    ``backbone`` one of :attr:`backbones` (``None`` = the first, the paper's size); ``hparams``
    overrides of :attr:`hyperparameters` (unknown keys are an error).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    official_code: ClassVar[str] = ""
    #: Backbone names this adapter can build; the first is the default (the paper's).
    backbones: ClassVar[tuple[str, ...]] = ()
    #: Hyper-parameters with their defaults; recorded in every run record.
    hyperparameters: ClassVar[dict[str, Any]] = {}
    #: The segmenter's own test-time protocol (its official test script).
    native: ClassVar[TestTimeSettings] = STANDARD_TEST_SETTINGS.replace(name="native")
    #: Dense-CRF parameters of the segmenter's own code, used by ``settings("native+crf")`` and
    #: ``settings("standard+crf")`` (default: the DeepLab-v2 re-implementation's).
    native_crf: ClassVar[CRFParams] = DEEPLAB_CRF
    #: Extra fields copied into every record this segmenter writes.
    record_fields: ClassVar[dict[str, Any]] = {}
    #: Input normalisation, in 0..1 units: ``(image / 255 - mean) / std`` per channel.
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD
    #: ``"RGB"`` or ``"BGR"`` (Caffe-converted networks such as DeepLab-v2 take BGR).
    channel_order: ClassVar[str] = "RGB"
    #: Arithmetic of :meth:`normalize`, as the official code does it: ``"float32"`` (torchvision's
    #: ``to_tensor`` + ``normalize``: ``x / 255``, ``- mean``, ``/ std`` each rounded to float32) or
    #: ``"float64"`` (NumPy on the uint8 image: computed in float64, rounded once to float32).
    normalize_dtype: ClassVar[str] = "float32"

    def __init__(self, num_classes: int, backbone: str | None = None,
                 hparams: dict[str, Any] | None = None):
        if num_classes < 2:
            raise WsssBenchError(f"segmenter {self.name!r}: num_classes (background included) must be >= 2, "
                                 f"got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone = resolve_backbone(f"segmenter {self.name!r}", self.backbones, backbone)
        self.hparams = resolve_hparams(f"segmenter {self.name!r}", self.hyperparameters, hparams)
        self.model: nn.Module | None = None

    @property
    def backbone_label(self) -> str:
        """The backbone as records and leaderboards name it (a segmenter whose hyperparameters
        change the network's size says so, e.g. ``resnet-w8-b1111``)."""
        return self.backbone

    # -- to implement ------------------------------------------------------------------------

    def build(self) -> nn.Module:
        """Create the network (randomly initialised, never downloading), store it in ``self.model``."""
        raise NotImplementedError

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint in the public layout onto ``self.model``'s names (pure; default: as is)."""
        return state

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw logits [B, num_classes, h', w'] of normalised images [B, 3, h, w].

        The default runs ``self.model(images)``; override when the network returns more.
        """
        if self.model is None:
            self.build()
        return self.model(images)

    # -- provided ------------------------------------------------------------------------------

    def load_checkpoint(self, path: str) -> str:
        """Load ``path`` (safetensors / ``torch.load(weights_only=True)``), filter, load strictly.

        Returns the SHA-256 of the file. A mismatch is a :class:`WsssBenchError` naming the file
        and the missing / unexpected / mis-shaped keys.
        """
        if self.model is None:
            self.build()
        return load_checkpoint_strict(self.model, path, self.filter_checkpoint, f"segmenter {self.name}")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) images [B, H, W, 3] RGB -> normalised float32 [B, 3, H, W].

        ``(image / 255 - mean) / std`` per channel in :attr:`channel_order`, in the arithmetic of
        :attr:`normalize_dtype` (float64 reproduces ``(x - 255 mean) / (255 std)`` of NumPy code
        bit for bit after the rounding to float32: checked for all 256 values of each channel).
        """
        import torch

        if images.ndim != 4 or images.shape[-1] != 3:
            raise WsssBenchError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
        if self.normalize_dtype not in NORMALIZE_DTYPES:
            raise WsssBenchError(f"segmenter {self.name!r}: normalize_dtype must be one of "
                                 f"{', '.join(NORMALIZE_DTYPES)}, got {self.normalize_dtype!r}")
        dtype = torch.float64 if self.normalize_dtype == "float64" else torch.float32
        x = images.permute(0, 3, 1, 2).to(dtype) / 255.0
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).float()

    def settings(self, which: str | TestTimeSettings = "standard") -> TestTimeSettings:
        """``"standard"``, ``"native"`` (either with ``+crf`` appended) or a settings object."""
        if isinstance(which, TestTimeSettings):
            return which
        base, _, extra = which.partition("+")
        if base == "standard":
            s = STANDARD_TEST_SETTINGS
        elif base == "native":
            s = self.native
        else:
            raise WsssBenchError(f"unknown test-time settings {which!r} (standard, native, standard+crf, native+crf)")
        if extra == "crf":
            return s.with_crf(s.crf or self.native_crf)
        if extra:
            raise WsssBenchError(f"unknown test-time settings {which!r} (standard, native, standard+crf, native+crf)")
        return s

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "paper": self.paper,
            "official_code": self.official_code, "backbones": list(self.backbones),
            "hyperparameters": dict(self.hyperparameters), "native": self.native.to_dict(),
            "channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std),
            "normalize_dtype": self.normalize_dtype,
        }
