"""Optional refinement of a run's maps into hard labels (CRF, saliency), reported as separate records."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsss_bench.inference.config import RunConfig

Refiner = Callable[[Any, torch.Tensor, np.ndarray], torch.Tensor]


def refinement_params(cfg: RunConfig) -> dict[str, Any]:
    from wsss_bench.refine import EDAM_CRF, EDAM_SALIENCY

    out: dict[str, Any] = {"rule": cfg.refine, "source": "EDAM (allenwu97/EDAM infer_cls.py, eval.py)"}
    if "crf" in (cfg.refine or ""):
        out["crf"] = dataclasses.asdict(EDAM_CRF)
        out["crf_background"] = "(1 - max) ** 1"
    if "saliency" in (cfg.refine or ""):
        out["saliency"] = {**dataclasses.asdict(EDAM_SALIENCY), "dir": os.path.abspath(cfg.saliency_dir or "")}
    return out


def make_refiner(cfg: RunConfig) -> Refiner | None:
    """A function (sample, maps [K,H,W] in [0,1], classes 1-based) -> hard label [H, W], or None."""
    if not cfg.refine:
        return None
    from wsss_bench import refine as R

    use_crf = "crf" in cfg.refine
    use_sal = "saliency" in cfg.refine
    if use_crf and not R.crf_available():
        R.dense_crf(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1, 1), np.float32))  # raises the clear error

    def refiner(sample: Any, maps: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
        H, W = maps.shape[-2:]
        ids = np.concatenate([np.zeros(1, np.int64), classes.astype(np.int64)])
        if maps.shape[0] == 0:
            return torch.zeros(H, W, dtype=torch.long, device=maps.device)
        scores = maps.clamp(0, 1).cpu().numpy()
        if use_crf:
            scores_all = R.dense_crf(sample.image, R.with_background(scores))
            if not use_sal:
                return torch.from_numpy(ids[np.argmax(scores_all, axis=0)]).to(maps.device)
            scores = scores_all[1:]
        sal = R.load_saliency(cfg.saliency_dir, sample.id, (H, W))
        return torch.from_numpy(R.apply_saliency(scores, sal, classes=classes)).to(maps.device)

    return refiner
