"""Test-time augmentation of localisation maps: views, fusion and normalisation (pure tensor code).

The procedure (IRN ``step/make_cam.py``, EDAM ``infer_cls.py``, MoRe ``tools/infer_lam.py``, as
summarised in METHODS.md): optionally resize the image to ``input_size``; for each scale, rescale
the image (bicubic, size rounded half to even like ``np.round``), and with ``flip`` add its
horizontal mirror; run the views; upsample every view's map bilinearly to the image size, flip the
mirrored ones back; fuse all views by ``sum`` or ``max``; normalise each class map by its max
(+ eps) or min-max.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.methods.base import InferenceSettings


def to_tensor_image(image: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, H, W] in 0..255 on ``device``."""
    t = torch.as_tensor(image).to(device)
    return t.permute(2, 0, 1)[None].float()


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale)))


def resize_image(img: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a [B, 3, H, W] 0..255 image like PIL does for uint8 (antialiased, clamped, rounded)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp_(0, 255).round_()


def normalise_image(img: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=img.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=img.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (img / 255.0 - m) / s


def make_views(img: torch.Tensor, settings: InferenceSettings, mean: tuple[float, ...],
               std: tuple[float, ...]) -> list[tuple[float, torch.Tensor]]:
    """Views of a batch of same-size images [B, 3, H, W] (0..255): a list over scales of
    ``(scale, views)`` with views [B * (2 if flip else 1), 3, h, w] ordered image-major, the
    flipped copy of image b at index ``2b + 1``."""
    if settings.input_size:
        img = resize_image(img, (settings.input_size, settings.input_size), mode="bilinear")
    h, w = img.shape[-2:]
    out = []
    for s in settings.scales:
        x = resize_image(img, scaled_size(h, w, s), mode="bicubic")
        x = normalise_image(x, mean, std)
        if settings.flip:
            x = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
        out.append((s, x))
    return out


def fuse_views(maps_per_scale: list[torch.Tensor], image_size: tuple[int, int], settings: InferenceSettings,
               batch: int) -> torch.Tensor:
    """Fuse per-scale maps [B * F, K, h', w'] (F = 2 with flip) into [B, K, H, W] at the image size."""
    fused: torch.Tensor | None = None
    for maps in maps_per_scale:
        up = F.interpolate(maps.float(), size=image_size, mode="bilinear", align_corners=settings.align_corners)
        if settings.flip:
            up = up.view(batch, 2, *up.shape[1:])
            views = [up[:, 0], up[:, 1].flip(-1)]
        else:
            views = [up]
        for v in views:
            if fused is None:
                fused = v.clone()
            elif settings.fusion == "sum":
                fused += v
            else:
                fused = torch.maximum(fused, v)
    assert fused is not None
    return fused


def normalise_maps(maps: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Per-class normalisation of [..., K, H, W] maps: ``max`` -> m / (max + eps);
    ``minmax`` -> (m - min) / (max(m - min) + eps)."""
    if settings.normalization == "minmax":
        maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    else:
        maps = maps.clamp(min=0)
    denom = maps.amax(dim=(-2, -1), keepdim=True) + settings.eps
    return torch.where(denom > 0, maps / torch.where(denom > 0, denom, torch.ones_like(denom)),
                       torch.zeros_like(maps))
