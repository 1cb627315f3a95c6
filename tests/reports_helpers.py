"""Builders for report tests: a tiny VOC-layout dataset, saved maps, and real run records.

Records come from the real evaluators (``eval_cams`` / ``eval_predictions``) and ``write_record``,
with the fields the method runner adds (``method``, ``backbone``, ``settings``, ``timings``,
``data_root``, ``cams_dir``) set by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss_bench import PROTOCOL_VERSION
from wsss_bench.data.classes import VOC
from wsss_bench.evaluate import GroundTruth, eval_cams, eval_predictions
from wsss_bench.io import save_cam_file, write_index_png
from wsss_bench.records import new_record, write_record

H, W = 24, 32


def make_voc(root: Path, n: int = 8, split: str = "train", seed: int = 0) -> tuple[Path, list[str]]:
    """VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt.

    Each image holds one or two rectangles of VOC classes 1..5 on background, with a 255 border.
    """
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for k, image_id in enumerate(ids):
        mask = np.zeros((H, W), np.uint8)
        for c in rng.choice(np.arange(1, 6), size=1 + k % 2, replace=False):
            y0, x0 = rng.integers(0, H // 2), rng.integers(0, W // 2)
            mask[y0:y0 + rng.integers(5, H // 2), x0:x0 + rng.integers(5, W // 2)] = c
        mask[0, :] = 255
        image = (rng.random((H, W, 3)) * 60 + VOC.palette[mask % 21][..., :3] * 0.7).astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_index_png(root / "SegmentationClass" / f"{image_id}.png", mask, VOC.palette)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def make_maps(root: Path, cams_dir: Path, quality: float, seed: int) -> Path:
    """Noisy maps of the ground-truth classes: ``quality`` in [0, 1] is how much signal they carry."""
    rng = np.random.default_rng(seed)
    cams_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted((root / "SegmentationClass").glob("*.png")):
        mask = np.asarray(Image.open(p))
        classes = np.array(sorted(c for c in np.unique(mask) if 0 < c < 255), dtype=np.int64)
        scores = np.stack([quality * (mask == c) + (1 - quality) * rng.random(mask.shape)
                           for c in classes]).astype(np.float32) if len(classes) else np.zeros((0, H, W), np.float32)
        save_cam_file(cams_dir / f"{p.stem}.npz", classes, scores)
    return cams_dir


def pseudo_record(root: Path, out: Path, method: str, quality: float, seed: int, **extra: Any) -> Path:
    """A real pseudo-label record (eval_cams on saved maps) with runner fields, written to ``out``."""
    cams = make_maps(root, out / f"cams-{method}-{seed}", quality, seed)
    gt = GroundTruth.from_folder(root / "SegmentationClass", VOC, "train")
    rec, counts = eval_cams(cams, gt, native_threshold=0.15)
    rec.update({"method": method, "variant": None, "backbone": "resnet50", "name": f"{method}-{seed}",
                "settings": {"name": "standard", "scales": [1.0], "flip": False},
                "timings": {"images_per_second": 10.0 + seed, "seconds": 1.0, "peak_rss_mb": 500.0 + seed,
                            "peak_device_memory_mb": None},
                "data_root": str(root), "cams_dir": str(cams)})
    rec["dataset"] = "voc"
    rec.update(extra)
    return write_record(out, rec, counts, stem=f"{method}-{seed}")


def segmentation_record(root: Path, out: Path, name: str, seed: int, **extra: Any) -> Path:
    rng = np.random.default_rng(seed)
    pred = out / f"pred-{name}"
    pred.mkdir(parents=True, exist_ok=True)
    for p in sorted((root / "SegmentationClass").glob("*.png")):
        mask = np.asarray(Image.open(p)).copy()
        mask[mask == 255] = 0
        flip = rng.random(mask.shape) < 0.1
        mask[flip] = 0
        write_index_png(pred / p.name, mask, VOC.palette)
    gt = GroundTruth.from_folder(root / "SegmentationClass", VOC, "val")
    rec, counts = eval_predictions(pred, gt)
    rec.update({"segmenter": name, "dataset": "voc"})
    rec.update(extra)
    return write_record(out, rec, counts, stem=name)


def hand_record(path: Path, name: str, miou: float, iou: list[float | None], **fields: Any) -> Path:
    """A hand-made record (no counts) with the given metrics; other metrics derived simply."""
    n = len(iou)
    metrics = {"miou": miou, "iou": iou, "precision": [0.8] * n, "recall": [0.7] * n,
               "fp_ratio": [None if v is None else (1 - v) / 2 for v in iou],
               "fn_ratio": [None if v is None else (1 - v) / 2 for v in iou],
               "pixel_accuracy": 0.9, "fw_iou": 0.8, "num_valid_classes": sum(v is not None for v in iou),
               "num_pixels": 1000}
    classes = fields.pop("classes", ["background"] + [f"c{i}" for i in range(1, n)])
    rec = new_record(fields.pop("kind", "pseudo_label"), fields.pop("dataset", "synthetic"),
                     fields.pop("split", "train"), classes, fields.pop("num_images", 10),
                     fields.pop("fingerprint", "f" * 64),
                     name=name, metrics=metrics, **fields)
    rec.setdefault("protocol_version", PROTOCOL_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path
