"""Scoring folders of predictions or localisation maps without any method adapter.

This is what ``wsss-bench eval`` calls: users evaluate what any official code base produced
(PNG masks, IRN-style ``.npy`` CAM dicts, our ``.npz`` maps) under the protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_bench.data.base import fingerprint_of
from wsss_bench.data.classes import ClassSet
from wsss_bench.errors import CarryUserErrors, WsssBenchError, raise_carried
from wsss_bench.io import load_cam_file, read_index_png
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.sweep import SweepEvaluator
from wsss_bench.records import new_record

Progress = Callable[[int, int], None]


@dataclass
class GroundTruth:
    """Where the ground truth of a split lives: ids -> mask paths, and the label space."""

    classes: ClassSet
    dataset: str
    split: str
    masks: dict[str, Path]

    @classmethod
    def from_folder(cls, gt_dir: str | os.PathLike, classes: ClassSet, split: str | None = None) -> GroundTruth:
        d = Path(gt_dir)
        if not d.is_dir():
            raise WsssBenchError("ground-truth folder not found", d)
        masks = {p.stem: p for p in sorted(d.glob("*.png"))}
        if not masks:
            raise WsssBenchError("no .png masks in the ground-truth folder", d)
        return cls(classes, classes.name, split or d.name, masks)

    @classmethod
    def from_dataset(cls, ds: Any) -> GroundTruth:
        masks = {i: ds.mask_path(i) for i in ds.ids}
        if any(p is None for p in masks.values()):
            raise WsssBenchError(f"split {ds.split!r} has no ground truth to score against", ds.root)
        return cls(ds.classes, ds.name, ds.split, masks)

    def fingerprint(self) -> str:
        return fingerprint_of(dict(self.masks))


class _PairReader(Dataset):
    """Reads (id, prediction-or-maps, gt) in DataLoader workers."""

    def __init__(self, ids: list[str], files: dict[str, Path], gt: dict[str, Path], maps: bool):
        self.ids, self.files, self.gt, self.maps = ids, files, gt, maps

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, Any, np.ndarray]:
        image_id = self.ids[i]
        gt = read_index_png(self.gt[image_id])
        pred = load_cam_file(self.files[image_id]) if self.maps else read_index_png(self.files[image_id])
        return image_id, pred, gt


def _match_files(pred_dir: Path, gt: GroundTruth, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise WsssBenchError("prediction folder not found", pred_dir)
    files: dict[str, Path] = {}
    for image_id in gt.masks:
        for sfx in suffixes:
            p = pred_dir / f"{image_id}{sfx}"
            if p.is_file():
                files[image_id] = p
                break
        else:
            raise WsssBenchError(f"missing prediction for image {image_id!r} "
                                 f"(expected {image_id}{' or '.join(suffixes)})", pred_dir)
    return files


def _loader(reader: Dataset, workers: int) -> Iterator[Any]:
    return raise_carried(DataLoader(CarryUserErrors(reader), batch_size=None, shuffle=False, num_workers=workers,
                                    collate_fn=lambda x: x, persistent_workers=False))


def eval_predictions(pred_dir: str | os.PathLike, gt: GroundTruth, workers: int = 0,
                     progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score one PNG per image (class-index values) -> a ``segmentation`` record and counts."""
    pred_dir = Path(pred_dir)
    files = _match_files(pred_dir, gt, (".png",))
    ids = list(gt.masks)
    ev = ConfusionEvaluator(gt.classes.num_classes)
    for n, (image_id, pred, g) in enumerate(_loader(_PairReader(ids, files, gt.masks, False), workers), 1):
        if pred.shape != g.shape:
            raise WsssBenchError(f"prediction size {pred.shape[1]}x{pred.shape[0]} differs from ground truth "
                                 f"{g.shape[1]}x{g.shape[0]}", files[image_id])
        ev.update(torch.from_numpy(pred), torch.from_numpy(g), image_id=image_id, name=str(files[image_id]))
        if progress:
            progress(n, len(ids))
    record = new_record("segmentation", gt.dataset, gt.split, gt.classes.names, len(ids), gt.fingerprint(),
                        name=f"eval-{pred_dir.name}", source=str(pred_dir), metrics=ev.metrics())
    return record, ev.per_image_counts()


def eval_cams(cam_dir: str | os.PathLike, gt: GroundTruth, workers: int = 0, num_thresholds: int = 100,
              label_source: str = "gt", native_threshold: float | None = None,
              progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score localisation maps with the threshold sweep -> a ``pseudo_label`` record and counts.

    ``label_source="gt"``: the image's label set is the classes of its ground-truth mask (what
    every paper does); ``"maps"``: the classes the map file lists (e.g. a classifier's predictions).
    Maps of classes outside the label set are not used; a class of the set without a map counts as
    a zero map (the record counts such images in ``images_missing_class_maps``).
    """
    if label_source not in ("gt", "maps"):
        raise WsssBenchError(f"label source must be 'gt' or 'maps', got {label_source!r}")
    cam_dir = Path(cam_dir)
    files = _match_files(cam_dir, gt, (".npz", ".npy"))
    ids = list(gt.masks)
    C = gt.classes.num_classes
    ev = SweepEvaluator(C, num_thresholds=num_thresholds)
    missing = 0
    reader = _PairReader(ids, files, gt.masks, True)
    for n, (image_id, (classes, scores), g) in enumerate(_loader(reader, workers), 1):
        path = files[image_id]
        if scores.shape[1:] != g.shape:
            raise WsssBenchError(f"map size {scores.shape[2]}x{scores.shape[1]} differs from ground truth "
                                 f"{g.shape[1]}x{g.shape[0]}", path)
        bad = classes[(classes < 1) | (classes >= C)]
        if bad.size:
            raise WsssBenchError(f"map class {int(bad[0])} is outside the foreground classes 1..{C - 1}", path)
        if label_source == "gt":
            present = np.bincount(g.reshape(-1), minlength=256)
            labels = [c for c in range(1, C) if present[c]]
        else:
            labels = sorted(int(c) for c in classes)
        index = {int(c): i for i, c in enumerate(classes)}
        if any(c not in index for c in labels):
            missing += 1
        stack = np.stack([scores[index[c]] if c in index else np.zeros(g.shape, np.float32) for c in labels]) \
            if labels else np.zeros((0, *g.shape), np.float32)
        ev.update(torch.from_numpy(stack), labels, torch.from_numpy(g), image_id=image_id, name=str(path))
        if progress:
            progress(n, len(ids))
    res = ev.results(native_threshold)
    record = new_record("pseudo_label", gt.dataset, gt.split, gt.classes.names, len(ids), gt.fingerprint(),
                        name=f"eval-{cam_dir.name}", source=str(cam_dir), label_source=label_source,
                        images_missing_class_maps=missing, **res)
    counts = ev.per_image_counts(res["best_threshold_index"])
    counts["threshold"] = np.asarray(res["best_threshold"])
    record["counts_threshold"] = res["best_threshold"]
    return record, counts
