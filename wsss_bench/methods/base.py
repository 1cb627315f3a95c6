"""The plug-in interface every localisation method implements.

A method adapter owns three things: its network (:meth:`MethodAdapter.build`), how a checkpoint
in the method's own released layout maps onto that network (:meth:`MethodAdapter.load_checkpoint`,
usually a pure key-filter function followed by a strict ``load_state_dict``), and one override
point, :meth:`MethodAdapter.forward_maps`, that turns a batch of normalised views into raw
per-class maps. Everything else (views for scales and flips, resizing, flip fusion, normalisation,
evaluation) is done by the runner (:mod:`wsss_bench.inference`) under :class:`InferenceSettings`,
so a new method is a page of code.

Adapters are found through the entry-point group ``wsss_bench.methods``; see
:mod:`wsss_bench.methods.registry`. Listing them reads only class attributes: an adapter module
imports torch and its network where it builds and runs it (:meth:`MethodAdapter.build`,
:meth:`MethodAdapter.forward_maps`), so ``wsss-bench methods`` starts without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.plugins import (  # noqa: F401 - load_strict and coerce_like are re-exported
    coerce_like,
    load_checkpoint_strict,
    load_strict,
    resolve_backbone,
    resolve_hparams,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Background:
    """A method's own background rule, as stored in run records.

    ``rule="constant"``: foreground where the top score exceeds ``value`` (IRN 0.15, EDAM 0.5,
    MoRe 0.5). ``rule="power"``: background score ``(1 - m) ** value`` (GETAM alpha 32); it is
    monotone in ``m``, so it equals a constant threshold t* solving ``t = (1 - t) ** alpha``.
    """

    rule: str = "constant"
    value: float = 0.15

    def threshold(self) -> float:
        """The equivalent constant threshold on the top score ``m``."""
        if self.rule == "constant":
            return float(self.value)
        if self.rule == "power":
            lo, hi = 0.0, 1.0  # f(t) = t - (1 - t)^a is increasing; bisect its root
            for _ in range(100):
                mid = (lo + hi) / 2
                if mid - (1 - mid) ** self.value > 0:
                    hi = mid
                else:
                    lo = mid
            return (lo + hi) / 2
        raise WsssBenchError(f"unknown background rule {self.rule!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "threshold": self.threshold()}


#: How an image is rescaled for a view (``InferenceSettings.resize`` / ``input_resize``):
#: ``pil-bicubic``: Pillow's bicubic ``Image.resize`` of the uint8 image (IRN ``misc/imutils.py``
#: ``pil_rescale``, EDAM ``voc12/data.py``): Pillow resamples in two passes and rounds to 8 bits between
#: them, so it is done with Pillow itself, in the loader workers, and is exact by construction.
#: ``bilinear``: plain float bilinear interpolation (no antialiasing, ``align_corners=False``) of the
#: normalised image on the device (MoRe ``tools/infer_lam.py``, ``utils/camutils.py``).
RESIZE_METHODS = ("pil-bicubic", "bilinear")
#: How a scaled side is rounded: ``round`` = ``np.round`` / Python ``round`` (half to even; IRN, EDAM),
#: ``floor`` = ``int(s * side)`` (MoRe's ``multi_scale_lam2``).
SIZE_ROUNDINGS = ("round", "floor")
#: Where a view's map is brought before fusion: ``direct`` = bilinear to the target size;
#: ``stride-padded`` = bilinear to the target size rounded up to a multiple of ``upsample_stride``,
#: flipped back there, fused, and cropped to the target (IRN ``step/make_cam.py``, ``strided_up_size``).
UPSAMPLINGS = ("direct", "stride-padded")
#: The size at which views are fused and normalised: ``image`` (the original image, IRN, EDAM) or
#: ``input`` (the ``input_size`` square, MoRe: fused and min-max normalised at 448 x 448, then resized
#: bilinearly to the image size).
FUSE_AT = ("image", "input")
FUSIONS = ("sum", "max")
#: Where a view and its mirror are fused: ``image`` = after upsampling (each view added on its own),
#: ``output`` = at the network's output size, before upsampling (IRN ``net/resnet50_cam.py``
#: ``CAM.forward``: ``x[0] + x[1].flip(-1)``).
FLIP_FUSE_AT = ("image", "output")
NORMALIZATIONS = ("max", "minmax", "none")


@dataclass(frozen=True)
class InferenceSettings:
    """Test-time augmentation and post-processing of maps: the whole native pipeline of a method.

    The pipeline (:mod:`wsss_bench.inference.tta`): optionally resize the image to the
    ``input_size`` square (``input_resize``); for each scale, rescale it (``resize``, sides rounded by
    ``size_rounding``), with ``flip`` add its mirror; run the views; bring every view's map to the
    fusion size (``fuse_at``) by bilinear upsampling (``upsample``, ``align_corners``); flip the
    mirrored maps back; fuse a view and its mirror by ``flip_fusion`` (after upsampling, or with
    ``flip_fuse_at="output"`` at the network's output size, before it) and the scales by
    ``scale_fusion``; normalise each class map (``normalization``, ``eps``); when fused at the input
    size, resize the normalised maps bilinearly to the image size.

    - ``normalization``: ``max`` (clamp at 0, divide by max + eps), ``minmax`` (subtract the min,
      divide by max + eps) or ``none`` (the adapter normalises each view itself, as GETAM).
    - ``eps``: the epsilon of the normalisation (EDAM uses 0).
    - ``background``: the method's own background rule (the sweep covers every threshold anyway).
    """

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    resize: str = "pil-bicubic"
    size_rounding: str = "round"
    input_size: int | None = None
    input_resize: str = "bilinear"
    upsample: str = "direct"
    upsample_stride: int = 16
    align_corners: bool = False
    fuse_at: str = "image"
    flip_fusion: str = "sum"
    flip_fuse_at: str = "image"
    scale_fusion: str = "sum"
    normalization: str = "max"
    eps: float = 1e-5
    background: Background = field(default_factory=Background)

    def __post_init__(self) -> None:
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise WsssBenchError(f"scales must be positive finite numbers, got {list(self.scales)}")
        if any(s > 8 for s in self.scales):
            raise WsssBenchError(f"scales above 8 are refused (got {list(self.scales)})")
        for name, allowed in (("resize", RESIZE_METHODS), ("input_resize", RESIZE_METHODS),
                              ("size_rounding", SIZE_ROUNDINGS), ("upsample", UPSAMPLINGS),
                              ("fuse_at", FUSE_AT), ("flip_fusion", FUSIONS), ("flip_fuse_at", FLIP_FUSE_AT),
                              ("scale_fusion", FUSIONS), ("normalization", NORMALIZATIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise WsssBenchError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.input_size is not None and not (isinstance(self.input_size, int) and 1 <= self.input_size <= 8192):
            raise WsssBenchError(f"input_size must be an integer in 1..8192 or None, got {self.input_size!r}")
        if self.resize == "pil-bicubic" and self.input_size is not None and self.input_resize != "pil-bicubic":
            raise WsssBenchError("resize='pil-bicubic' works on uint8 images: it cannot follow a float "
                                 "input_resize='bilinear' (use resize='bilinear' or input_resize='pil-bicubic')")
        if self.fuse_at == "input" and self.input_size is None:
            raise WsssBenchError("fuse_at='input' needs an input_size")
        if not (isinstance(self.upsample_stride, int) and self.upsample_stride >= 1):
            raise WsssBenchError(f"upsample_stride must be a positive integer, got {self.upsample_stride!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise WsssBenchError(f"eps must be a finite number >= 0, got {self.eps}")

    def replace(self, **changes: Any) -> InferenceSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["background"] = self.background.to_dict()
        return d


#: The shared protocol settings, identical for all methods (docs/methods.md, "standard"): Pillow bicubic
#: rescaling (the convention of IRN and EDAM), scales 1.0, 0.5, 1.5, 2.0 with flips, every view
#: upsampled straight to the image size, summed, and each class map divided by its max + 1e-5.
STANDARD_SETTINGS = InferenceSettings(
    scales=(1.0, 0.5, 1.5, 2.0), flip=True, resize="pil-bicubic", size_rounding="round", input_size=None,
    upsample="direct", align_corners=False, fuse_at="image", flip_fusion="sum", scale_fusion="sum",
    normalization="max", eps=1e-5, background=Background("constant", 0.15),
)


class MethodAdapter:
    """Base class of localisation-method adapters.

    Subclasses set the class attributes and implement :meth:`build`, :meth:`load_checkpoint`
    (or :meth:`filter_checkpoint`) and :meth:`forward_maps`.

    Constructor arguments: ``num_classes`` is the number of *foreground* classes (VOC 20,
    COCO 80, synthetic 5); ``backbone`` one of :attr:`backbones` (``None`` = the first, the
    method's real size); ``hparams`` overrides of :attr:`hyperparameters`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    official_code: ClassVar[str] = ""
    #: Backbone names this adapter can build; the first is the default (the paper's).
    backbones: ClassVar[tuple[str, ...]] = ()
    #: Hyper-parameters with their defaults; recorded in every run record.
    hyperparameters: ClassVar[dict[str, Any]] = {}
    #: The method's own inference settings.
    native: ClassVar[InferenceSettings] = STANDARD_SETTINGS
    #: Whether forward_maps needs autograd (GETAM's gradients); the runner then skips no_grad.
    needs_grad: ClassVar[bool] = False
    #: Whether the adapter can run without a checkpoint (e.g. the centre prior).
    needs_checkpoint: ClassVar[bool] = True
    #: Extra fields copied into every record this adapter writes (e.g. AD-CAM's interpretation).
    record_fields: ClassVar[dict[str, Any]] = {}
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    def __init__(self, num_classes: int, backbone: str | None = None,
                 hparams: dict[str, Any] | None = None):
        if num_classes < 1:
            raise WsssBenchError(f"{self.name}: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone = resolve_backbone(f"method {self.name!r}", self.backbones, backbone)
        self.hparams = resolve_hparams(f"method {self.name!r}", self.hyperparameters, hparams)
        self.model: nn.Module | None = None

    # -- to implement ------------------------------------------------------------------------

    def build(self) -> nn.Module:
        """Create the network (randomly initialised, never downloading), store it in ``self.model``."""
        raise NotImplementedError

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint in the method's released layout onto ``self.model``'s names."""
        return state

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Raw maps for a batch of views.

        ``views``: float [V, 3, h, w], normalised with :attr:`mean`/:attr:`std`; all views share
        a size (the runner groups views by size). ``classes``: int64 [K], the 0-based
        *foreground* indices of the image's classes (VOC: 0..19), ascending. When the runner
        batches several images of the same size (``--batch-size``), ``views`` holds the views of
        all of them and ``classes`` is the union of their classes; adapters with
        :attr:`needs_grad` always get the views of one image.
        Returns non-negative float maps [V, K, h', w'] at any resolution (the runner upsamples
        them bilinearly to the image size with ``native.align_corners``).
        """
        raise NotImplementedError

    def activate(self, maps: torch.Tensor) -> torch.Tensor:
        """Applied by the runner to each view's map after it is upsampled to the fusion size and before
        flips and scales are fused; the identity unless a method's official code activates there
        (MoRe's CAM: ReLU after upsampling, which does not commute with bilinear upsampling)."""
        return maps

    # -- provided ------------------------------------------------------------------------------

    def load_checkpoint(self, path: str) -> str:
        """Load ``path`` (``weights_only`` / safetensors), filter it and load strictly.

        Returns the SHA-256 of the file.
        """
        if self.model is None:
            self.build()
        return load_checkpoint_strict(self.model, path, self.filter_checkpoint, self.name)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "paper": self.paper,
            "official_code": self.official_code, "backbones": list(self.backbones),
            "hyperparameters": dict(self.hyperparameters), "native": self.native.to_dict(),
        }
