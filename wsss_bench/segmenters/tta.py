"""The test-time protocol of final segmentation: views, upsampling, fusion, optional CRF, argmax.

Pure tensor code, no I/O. One call handles a batch of images of the same size (the runner groups
images by size; each view of the batch is one forward pass, the flips stacked with it).

For settings ``s`` (:class:`~wsss_bench.segmenters.base.TestTimeSettings`) and a normalised batch
``x`` [B, 3, H, W], with ``f`` the segmenter's logits function:

1. for each scale ``k``, the view ``v`` (``s.resize``): ``F.interpolate(x, size=view_size(H, W, k))``
   (``"float-size"``; the image itself when the size is unchanged), ``F.interpolate(x,
   scale_factor=k)`` (``"float-scale-factor"``; the image itself at 1.0), or the normalised uint8 view
   that :func:`prepare_views` made with OpenCV in the loader workers (``"opencv-uint8"``), all
   bilinear with ``align_corners=False``; ``o = f(v)``; with ``flip``, ``o' = f(flip(v))`` (both in
   one forward pass);
2. each output is upsampled bilinearly (``s.align_corners``) to the fusion size (the image size, or
   with ``fuse_at="logits"`` the logit size of the scale-1.0 view) and the flipped ones are flipped
   back (upsample, then flip: the order of MoRe's ``tools/infer_seg_voc.py``);
3. with ``flip_fusion``, ``o`` and ``o'`` become one output per scale (sum / mean / max of logits);
4. all outputs are fused in the order of ``s.scales``: ``softmax-mean`` = mean over outputs of
   ``softmax(o, dim=1)``, or ``mean`` / ``sum`` / ``max`` of logits (a running sum divided once at
   the end, a running maximum);
5. with ``fuse_at="logits"`` the fused map is upsampled to the image size;
6. the prediction is the argmax over classes of the fused scores, or with ``s.crf`` the argmax of
   the dense-CRF marginals of the fused probabilities (softmax of fused logits) given the image in
   ``s.crf_image`` order.

The standard protocol is scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 with flip, softmax-mean, no CRF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.errors import WsssBenchError
from wsss_bench.segmenters.base import TestTimeSettings

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
#: Per image: its uint8 views (HxWx3), one per scale, when the settings resize with OpenCV; else None.
PreparedViews = tuple[np.ndarray, ...] | None


def view_size(height: int, width: int, scale: float, input_size: int | None = None) -> tuple[int, int]:
    """Size of the view at ``scale``: ``floor(H s) x floor(W s)``, or ``floor(input_size s)`` square."""
    if input_size is not None:
        side = max(1, int(math.floor(input_size * scale + 1e-9)))
        return side, side
    return max(1, int(math.floor(height * scale + 1e-9))), max(1, int(math.floor(width * scale + 1e-9)))


def opencv_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h))`` of a uint8 HxWx3 image (``INTER_LINEAR``, OpenCV's default and the
    one GETAM's ``test.py`` uses); the same array when the size does not change (OpenCV copies it).
    Each channel is resampled on its own, so RGB and BGR give the same values."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    import cv2

    return cv2.resize(np.ascontiguousarray(image), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def prepare_views(image: np.ndarray, settings: TestTimeSettings) -> PreparedViews:
    """The uint8 views of one image (one per scale, before flipping) when ``settings.resize`` is
    ``"opencv-uint8"``, else None. Meant to run in the loader workers."""
    if settings.resize != "opencv-uint8":
        return None
    h, w = image.shape[:2]
    return tuple(opencv_resize(image, view_size(h, w, s, settings.input_size)) for s in settings.scales)


def stack_views(prepared: Sequence[PreparedViews], normalize: Callable[[torch.Tensor], torch.Tensor],
                device: torch.device | str) -> list[torch.Tensor] | None:
    """Per scale, the normalised views of a batch [B, 3, h_k, w_k] on ``device`` (None when not prepared)."""
    if not prepared or prepared[0] is None:
        return None
    if any(p is None or len(p) != len(prepared[0]) for p in prepared):
        raise WsssBenchError("uint8 views are missing for some images of the batch")
    out = []
    for k in range(len(prepared[0])):
        batch = np.stack([np.asarray(p[k]) for p in prepared])  # type: ignore[index]
        out.append(normalize(torch.from_numpy(batch).to(device)))
    return out


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _combine(a: torch.Tensor, b: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "max":
        return torch.maximum(a, b)
    return a + b  # sum; mean divides at the end


def make_view(images: torch.Tensor, scale: float, settings: TestTimeSettings) -> torch.Tensor:
    """The float view of a normalised batch at ``scale`` (``"float-size"`` / ``"float-scale-factor"``)."""
    if settings.resize == "opencv-uint8":
        raise WsssBenchError("resize='opencv-uint8' needs the uint8 views of prepare_views (the views argument)")
    if settings.resize == "float-scale-factor":
        if scale == 1.0:
            return images
        return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    h, w = images.shape[-2:]
    return _resize(images, view_size(h, w, scale, settings.input_size))


def fused_scores(logits_fn: LogitsFn, images: torch.Tensor, settings: TestTimeSettings,
                 out_size: tuple[int, int] | None = None,
                 views: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Fused per-class scores [B, C, H, W] of a normalised batch ``images`` [B, 3, H, W].

    Probabilities for ``fusion="softmax-mean"``, fused logits otherwise (see :func:`probabilities`).
    ``out_size`` overrides the output size (default: the images' size). ``views``: one normalised
    batch per scale made elsewhere (:func:`prepare_views` + :func:`stack_views`; needed for
    ``resize="opencv-uint8"``). Views are accumulated one at a time, so memory holds two maps of the
    image size, however many views there are.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise WsssBenchError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    target = tuple(out_size) if out_size is not None else (h, w)
    s = settings
    if views is not None and len(views) != len(s.scales):
        raise WsssBenchError(f"{len(views)} views given for {len(s.scales)} scales")
    fuse_size: tuple[int, int] | None = target if s.fuse_at == "image" else None
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # fuse_at="logits": until the size is known

    acc: torch.Tensor | None = None
    count = 0

    def add(out: torch.Tensor) -> None:
        nonlocal acc, count
        term = out.softmax(dim=1) if s.fusion == "softmax-mean" else out
        if acc is None:
            acc = term.clone()
        elif s.fusion == "max":
            acc = torch.maximum(acc, term)
        else:
            acc = acc + term
        count += 1

    def emit(orig: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> None:
        o = _resize(orig, size, s.align_corners)
        if flipped is None:
            add(o)
            return
        f = _resize(flipped, size, s.align_corners).flip(-1)
        if s.flip_fusion is None:
            add(o)
            add(f)
        else:
            c = _combine(o, f, s.flip_fusion)
            add(c / 2 if s.flip_fusion == "mean" else c)

    for k, scale in enumerate(s.scales):
        v = views[k] if views is not None else make_view(images, scale, s)
        if v.shape[0] != b:
            raise WsssBenchError(f"view {k} holds {v.shape[0]} images for a batch of {b}")
        batch = torch.cat([v, v.flip(-1)], dim=0) if s.flip else v
        out = logits_fn(batch).float()
        if out.ndim != 4 or out.shape[0] != batch.shape[0]:
            raise WsssBenchError(f"segmenter logits must be [B, C, h, w] for a batch of {batch.shape[0]}, "
                                 f"got shape {tuple(out.shape)}")
        orig, flipped = (out[:b], out[b:]) if s.flip else (out, None)
        if fuse_size is None:
            if scale == 1.0:
                fuse_size = tuple(orig.shape[-2:])
                for o, f in pending:
                    emit(o, f, fuse_size)
                pending.clear()
            else:
                pending.append((orig, flipped))
                continue
        emit(orig, flipped, fuse_size)
    assert acc is not None
    if s.fusion in ("softmax-mean", "mean"):
        acc = acc / count
    return _resize(acc, target, s.align_corners)


def probabilities(fused: torch.Tensor, settings: TestTimeSettings) -> torch.Tensor:
    """Class probabilities of :func:`fused_scores`' output (softmax unless already probabilities)."""
    return fused if settings.fusion == "softmax-mean" else fused.softmax(dim=1)


def decide(fused: torch.Tensor, settings: TestTimeSettings,
           raw_images: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """Hard predictions int64 [B, H, W] from :func:`fused_scores`' output (argmax, or CRF then argmax).

    ``raw_images`` (uint8 HxWx3 RGB, one per batch item) are needed only for the dense CRF.
    """
    if settings.crf is None:
        return fused.argmax(dim=1)
    from wsss_bench.refine import dense_crf

    if raw_images is None or len(raw_images) != fused.shape[0]:
        raise WsssBenchError("the dense CRF needs the original images")
    probs = probabilities(fused, settings)
    out = []
    for p, img in zip(probs, raw_images, strict=True):
        img = np.asarray(img)
        if settings.crf_image == "BGR":
            img = np.ascontiguousarray(img[..., ::-1])
        q = dense_crf(img, p.detach().float().cpu(), settings.crf)
        out.append(torch.as_tensor(np.asarray(q)).argmax(dim=0))
    return torch.stack(out).to(fused.device)


def predict(logits_fn: LogitsFn, images: torch.Tensor, settings: TestTimeSettings,
            raw_images: Sequence[np.ndarray] | None = None,
            views: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Hard predictions int64 [B, H, W] of a normalised batch under ``settings`` (see :func:`decide`)."""
    return decide(fused_scores(logits_fn, images, settings, views=views), settings, raw_images)
