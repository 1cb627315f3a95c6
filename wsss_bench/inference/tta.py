"""Test-time augmentation of localisation maps: views, fusion and normalisation.

The pipeline each method's official inference runs, parametrised by
:class:`~wsss_bench.methods.base.InferenceSettings` (see its docstring for the order of the steps):

- image side: :func:`prepare_images` (numpy, Pillow; runs in the loader workers) does every uint8
  rescale with Pillow itself, so IRN's and EDAM's ``Image.resize(..., BICUBIC)`` (two separable passes
  with rounding to 8 bits between them) is reproduced exactly by construction;
  :func:`make_views` (torch, on the device) normalises, does the float bilinear resizes (MoRe) and
  adds the mirrored views;
- map side: :func:`fuse_views` brings each view's map to the fusion size (straight, or to the size
  rounded up to a multiple of the stride and then cropped, as IRN's ``make_cam.py``), flips the
  mirrored maps back, fuses flips and scales, normalises each class map and, when fused at the input
  size, resizes the normalised maps to the image size (MoRe's ``infer_lam.py``).

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.methods.base import InferenceSettings

#: Per image: the uint8 images of every scale (HxWx3), or None when the device does the resizing.
PreparedImages = tuple[np.ndarray, ...] | None


def scaled_size(h: int, w: int, scale: float, rounding: str = "round") -> tuple[int, int]:
    """The size of a view at ``scale``: ``round`` as IRN/EDAM (``np.round(side * scale)``, half to
    even), ``floor`` as MoRe (``int(scale * side)``); at least 1 pixel."""
    if rounding == "floor":
        return max(1, int(scale * h)), max(1, int(scale * w))
    return max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale)))


def pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's bicubic resize of a uint8 HxWx3 image to ``size`` (h, w); the same array when the size
    does not change (IRN's ``pil_resize``; Pillow's own ``resize`` copies in that case)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.BICUBIC))


def base_size(h: int, w: int, settings: InferenceSettings) -> tuple[int, int]:
    """The size the scales apply to: the ``input_size`` square, or the image's own size."""
    if settings.input_size:
        return settings.input_size, settings.input_size
    return h, w


def view_sizes(h: int, w: int, settings: InferenceSettings) -> list[tuple[int, int]]:
    bh, bw = base_size(h, w, settings)
    return [scaled_size(bh, bw, s, settings.size_rounding) for s in settings.scales]


def prepare_images(image: np.ndarray, settings: InferenceSettings) -> PreparedImages:
    """The uint8 views of one image (before flipping) when the settings rescale with Pillow, else
    None. Meant to run in the loader workers."""
    if settings.resize != "pil-bicubic":
        return None
    h, w = image.shape[:2]
    base = image
    if settings.input_size:  # input_resize is pil-bicubic too (InferenceSettings checks it)
        base = pil_resize(image, (settings.input_size, settings.input_size))
    return tuple(pil_resize(base, size) for size in view_sizes(h, w, settings))


def to_tensor_image(image: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, H, W] in 0..255 on ``device``."""
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)  # Pillow's are read-only
    t = torch.as_tensor(image).to(device)
    return t.permute(2, 0, 1)[None].float()


def normalise_image(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(img / 255 - mean) / std per channel of a 0..255 integer-valued image, computed in float64 and
    rounded once to float32, as numpy does in ``TorchvisionNormalize`` (IRN) and ``Normalize`` (EDAM):
    a 256-entry table per channel, so it is exact on every device (MPS has no float64)."""
    m = torch.tensor(mean, dtype=torch.float64)[:, None]
    s = torch.tensor(std, dtype=torch.float64)[:, None]
    table = ((torch.arange(256, dtype=torch.float64)[None] / 255.0 - m) / s).float().to(img.device)  # [3, 256]
    idx = img.round().clamp(0, 255).long()
    return torch.stack([table[c][idx[:, c]] for c in range(3)], dim=1)


def bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Plain bilinear interpolation (no antialiasing); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _with_flips(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """[B, 3, h, w] -> [B * 2, 3, h, w] with the mirror of image b at index 2b + 1 (or unchanged)."""
    return torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1) if flip else x


def make_views(images: list[np.ndarray], prepared: list[PreparedImages], settings: InferenceSettings,
               mean: Sequence[float], std: Sequence[float], device: torch.device | str
               ) -> list[tuple[float, torch.Tensor]]:
    """Normalised views of same-size images: a list over scales of ``(scale, views)`` with views
    [B * (2 if flip else 1), 3, h, w] ordered image-major, the mirror of image b at ``2b + 1``.

    ``prepared[b]`` holds image b's Pillow-rescaled uint8 views (:func:`prepare_images`), or None
    when the settings resize on the device (float bilinear of the normalised image, as MoRe)."""
    out = []
    if settings.resize == "pil-bicubic":
        for i, s in enumerate(settings.scales):
            views = [p[i] if p is not None else prepare_images(img, settings)[i]  # type: ignore[index]
                     for img, p in zip(images, prepared, strict=True)]
            x = torch.cat([to_tensor_image(v, device) for v in views])
            out.append((s, _with_flips(normalise_image(x, mean, std), settings.flip)))
        return out
    x = normalise_image(torch.cat([to_tensor_image(img, device) for img in images]), mean, std)
    h, w = x.shape[-2:]
    if settings.input_size:
        x = bilinear(x, (settings.input_size, settings.input_size))
    for s, size in zip(settings.scales, view_sizes(h, w, settings), strict=True):
        out.append((s, _with_flips(bilinear(x, size), settings.flip)))
    return out


def fusion_size(image_size: tuple[int, int], settings: InferenceSettings) -> tuple[int, int]:
    """Where views are fused and normalised: the image, or the ``input_size`` square."""
    if settings.fuse_at == "input":
        return settings.input_size, settings.input_size  # type: ignore[return-value]
    return image_size


def upsampled_size(target: tuple[int, int], settings: InferenceSettings) -> tuple[int, int]:
    """The size maps are upsampled to: the target, or the target rounded up to a multiple of the
    stride (IRN's ``get_strided_up_size``), cropped back to the target after fusion."""
    if settings.upsample == "stride-padded":
        st = settings.upsample_stride
        return tuple(((t - 1) // st + 1) * st for t in target)  # type: ignore[return-value]
    return target


def fuse_views(maps_per_scale: list[torch.Tensor], image_size: tuple[int, int], settings: InferenceSettings,
               batch: int, activate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Fuse per-scale raw maps [B * F, K, h', w'] (F = 2 with flip) into un-normalised [B, K, h, w]
    at the fusion size (:func:`fusion_size`). ``activate`` (the adapter's
    :meth:`~wsss_bench.methods.base.MethodAdapter.activate`) is applied to every view's map once it
    is upsampled, before flips and scales are fused (MoRe's CAM: ReLU after upsampling to 448)."""
    target = fusion_size(image_size, settings)
    up_size = upsampled_size(target, settings)
    fused: torch.Tensor | None = None
    for maps in maps_per_scale:
        maps = maps.float()

        def up(x: torch.Tensor) -> torch.Tensor:
            x = bilinear(x, up_size, settings.align_corners)
            return activate(x) if activate is not None else x

        if settings.flip and settings.flip_fuse_at == "output":  # IRN: mirror added at the network's size
            m = maps.view(batch, 2, *maps.shape[1:])
            a, b = m[:, 0], m[:, 1].flip(-1)
            views = [up(a + b if settings.flip_fusion == "sum" else torch.maximum(a, b))]
        elif settings.flip:
            u = up(maps).view(batch, 2, maps.shape[1], *up_size)
            a, b = u[:, 0], u[:, 1].flip(-1)
            # sums add each view on its own, in order (EDAM's np.sum over its 8 maps)
            views = [a, b] if settings.flip_fusion == "sum" else [torch.maximum(a, b)]
        else:
            views = [up(maps)]
        for view in views:
            view = view[..., : target[0], : target[1]]
            if fused is None:
                fused = view.clone()
            elif settings.scale_fusion == "sum":
                fused += view
            else:
                fused = torch.maximum(fused, view)
    assert fused is not None
    return fused


def normalise_maps(maps: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Per-class normalisation of [..., K, H, W] maps: ``max`` -> clamp(m, 0) / (max + eps);
    ``minmax`` -> (m - min) / (max(m - min) + eps). A map whose denominator is 0 (all zero with
    eps = 0, as EDAM's division without epsilon would give NaN) becomes all zero. ``none``: unchanged
    (the adapter normalised each view itself)."""
    if settings.normalization == "none":
        return maps
    if settings.normalization == "minmax":
        maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    else:
        maps = maps.clamp(min=0)
    denom = maps.amax(dim=(-2, -1), keepdim=True) + settings.eps
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, maps / safe, torch.zeros_like(maps))


def finalise_maps(fused: torch.Tensor, image_size: tuple[int, int], settings: InferenceSettings) -> torch.Tensor:
    """Normalise fused maps and, when fused at the input size, resize them to the image size
    (bilinear, ``align_corners=False``, as MoRe's ``infer_lam.py`` resizes to the label size)."""
    maps = normalise_maps(fused, settings)
    if settings.fuse_at == "input":
        squeeze = maps.ndim == 3
        maps = bilinear(maps[None] if squeeze else maps, image_size)
        maps = maps[0] if squeeze else maps
    return maps
