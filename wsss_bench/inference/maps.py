"""A method's maps for a batch of images: adapter construction and the whole native pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.inference.config import RunConfig
from wsss_bench.inference.device import autocast_context
from wsss_bench.inference.tta import PreparedImages, finalise_maps, fuse_views, make_views
from wsss_bench.methods.base import STANDARD_SETTINGS, InferenceSettings, MethodAdapter


def resolve_settings(adapter: MethodAdapter, cfg: RunConfig) -> InferenceSettings:
    """The adapter's native settings or the shared standard ones (with the adapter's background
    rule), with ``--scales`` / ``--flip`` applied."""
    if cfg.settings == "native":
        s = adapter.native
    elif cfg.settings == "standard":
        s = STANDARD_SETTINGS.replace(background=adapter.native.background)
    else:
        raise WsssBenchError(f"settings must be 'native' or 'standard', got {cfg.settings!r}")
    if cfg.scales is not None:
        s = s.replace(scales=tuple(float(x) for x in cfg.scales))
    if cfg.flip is not None:
        s = s.replace(flip=bool(cfg.flip))
    return s


def build_adapter(cfg: RunConfig, num_foreground: int) -> tuple[MethodAdapter, str | None]:
    """Instantiate, build and load the adapter; returns it and the checkpoint's SHA-256."""
    from wsss_bench.methods.registry import load_method

    cls = load_method(cfg.method)
    adapter = cls(num_foreground, backbone=cfg.backbone, hparams=cfg.hparams)
    adapter.build()
    sha = None
    if cfg.checkpoint:
        sha = adapter.load_checkpoint(cfg.checkpoint)
    elif adapter.needs_checkpoint:
        raise WsssBenchError(f"method {cfg.method!r} needs --checkpoint (a {cfg.method} checkpoint file)")
    adapter.model.eval()
    return adapter, sha


def compute_maps(adapter: MethodAdapter, samples: list[Any], settings: InferenceSettings,
                 device: torch.device, precision: str = "fp32",
                 prepared: list[PreparedImages] | None = None) -> list[torch.Tensor]:
    """Fused, normalised maps [K_i, H, W] (float32 on ``device``) for same-size samples, each for the
    sample's own classes in ascending order. ``prepared``: the Pillow views the loader made (made here
    when absent). Non-finite maps (a checkpoint with NaN weights, an overflow) are an error."""
    H, W = samples[0].image.shape[:2]
    per_image = [torch.from_numpy(np.nonzero(s.labels)[0]).long() for s in samples]
    union = torch.unique(torch.cat(per_image)) if per_image else torch.zeros(0, dtype=torch.long)
    if union.numel() == 0:
        return [torch.zeros(0, H, W, device=device) for _ in samples]
    if prepared is None:
        prepared = [None] * len(samples)
    views = make_views([s.image for s in samples], prepared, settings, adapter.mean, adapter.std, device)
    grad = torch.enable_grad() if adapter.needs_grad else torch.no_grad()
    with grad, autocast_context(device, precision):
        outs = [adapter.forward_maps(v, union.to(device)).detach().float() for _, v in views]
    fused = fuse_views(outs, (H, W), settings, len(samples), adapter.activate)  # [B, K_union, h, w]
    if not bool(torch.isfinite(fused).all()):
        ids = ", ".join(str(s.id) for s in samples)
        raise WsssBenchError(f"{adapter.name} produced NaN or infinite maps for image {ids} "
                             f"(non-finite checkpoint weights, or an overflow at --precision {precision})")
    pos = {int(c): i for i, c in enumerate(union)}
    result = []
    for b, cls in enumerate(per_image):
        sel = torch.tensor([pos[int(c)] for c in cls], dtype=torch.long, device=device)
        result.append(finalise_maps(fused[b].index_select(0, sel), (H, W), settings))
    return result
