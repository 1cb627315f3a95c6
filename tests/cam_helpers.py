"""A tiny randomly initialised CAM checkpoint in IRN's key layout, shared by runner-level tests."""

from __future__ import annotations

from pathlib import Path

import torch

from wsss_bench.methods.cam import CAMAdapter


def write_tiny_cam_checkpoint(path: Path, seed: int, num_classes: int = 5) -> Path:
    """Save a ``resnet-tiny`` CAM (seeded) as IRN saves ``resnet50_cam``: ``resnet50.*`` + ``classifier.weight``."""
    torch.manual_seed(seed)
    a = CAMAdapter(num_classes, backbone="resnet-tiny")
    a.build()
    state = {f"resnet50.{k}": v for k, v in a.model.backbone.state_dict().items()}
    state["classifier.weight"] = a.model.classifier.weight.detach()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
