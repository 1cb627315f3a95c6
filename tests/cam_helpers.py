"""CAM checkpoints in IRN's exact key layout, shared by the runner and fidelity tests."""

from __future__ import annotations

from pathlib import Path

import torch

from wsss_bench.methods.cam import CAMAdapter


def irn_layout(backbone: dict[str, torch.Tensor], classifier: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state dict jiwoon-ahn/irn ``step/train_cam.py`` saves for ``net/resnet50_cam.Net``, from a
    ResNet state dict in torchvision names (``conv1``, ``bn1``, ``layer1..4``; no ``fc``).

    ``Net`` registers each module under several names, and ``state_dict()`` lists all of them:
    ``resnet50.*``; ``stage1`` = Sequential(conv1, bn1, relu, maxpool, layer1) -> ``stage1.0/1/4.*``;
    ``stage2..4`` = Sequential(layerN) -> ``stageN.0.*``; ``backbone`` = ModuleList([stage1..4]) ->
    ``backbone.<N-1>.*``; ``classifier.weight`` and ``newly_added`` = ModuleList([classifier]) ->
    ``newly_added.0.weight``. The copies are the same tensors (shared storage, as torch.save keeps them).
    """
    state = {f"resnet50.{k}": v for k, v in backbone.items()}
    stages: dict[str, torch.Tensor] = {}
    for k, v in backbone.items():
        head, _, rest = k.partition(".")
        if head == "conv1":
            stages[f"stage1.0.{rest}"] = v
        elif head == "bn1":
            stages[f"stage1.1.{rest}"] = v
        elif head == "layer1":
            stages[f"stage1.4.{rest}"] = v
        else:
            stages[f"stage{int(head[-1])}.0.{rest}"] = v
    state.update(stages)
    for k, v in stages.items():
        n, _, rest = k[len("stage"):].partition(".")
        state[f"backbone.{int(n) - 1}.{rest}"] = v
    state["classifier.weight"] = classifier
    state["newly_added.0.weight"] = classifier
    return state


def write_tiny_cam_checkpoint(path: Path, seed: int, num_classes: int = 5) -> Path:
    """Save a ``resnet-tiny`` CAM (seeded) as IRN saves ``resnet50_cam``: :func:`irn_layout`."""
    torch.manual_seed(seed)
    a = CAMAdapter(num_classes, backbone="resnet-tiny")
    a.build()
    state = irn_layout(a.model.backbone.state_dict(), a.model.classifier.weight.detach())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
