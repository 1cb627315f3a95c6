"""Pseudo-label PNGs (``--save-pseudo DIR``): hard labels from the run's maps at a chosen threshold.

Labels follow the protocol's strict rule (foreground where the top score is greater than the
threshold, ties to background), at the best, calibrated or a given threshold, or under the
method's own native rule exactly. Beside the PNGs, ``wsss-bench-pseudo.json`` says where they came
from (the run record's name, method, fingerprint, threshold, mIoU), so ``wsss-bench train-seg``
can name its provenance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.inference.cache import read_maps
from wsss_bench.io import atomic_write_json, write_index_png
from wsss_bench.metrics.rules import pseudo_label as protocol_label

PSEUDO_JSON = "wsss-bench-pseudo.json"
PSEUDO_FORMAT = "wsss-bench-pseudo"
PSEUDO_VERSION = 1
PSEUDO_KEYS = ("format", "version", "record", "record_file", "method", "settings", "fingerprint", "dataset",
               "split", "num_images", "miou", "threshold", "threshold_rule", "labels_miou", "ignore_band")


def label_rule(threshold: str, res: dict[str, Any], native: tuple[str, float]) -> tuple[str, float]:
    """The rule the PNGs use: ``("constant", t)`` or the native ``("power", alpha)``."""
    if threshold == "best":
        return "constant", float(res["best_threshold"])
    if threshold == "native":
        return native
    if threshold == "calibrated":
        t = res["calibrated"]["threshold"]
        if t is None:
            raise WsssBenchError("no calibrated threshold (calibration subset empty); use best, native or a number")
        return "constant", float(t)
    return "constant", float(threshold)


def hard_label(maps: Any, classes: np.ndarray, rule: tuple[str, float],
               ignore_band: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 [H, W]: the top class (lowest index on ties) where it is foreground under ``rule``
    (``constant t``: m > float32(t); ``power a``: m > t*, the float32 root of t = (1 - t) ** a, the
    very comparison the evaluator's native rule makes), background elsewhere; with
    ``ignore_band=(lo, hi)``, 255 where lo <= m < hi. See :func:`wsss_bench.metrics.rules.pseudo_label`."""
    return protocol_label(maps, classes, rule=rule, ignore_band=ignore_band)


def write_pseudo_labels(ds: Any, ids: list[str], cams_dir: Path, out_dir: Path, rule: tuple[str, float],
                        ignore_band: tuple[float, float] | None, evaluator: Any = None) -> None:
    """VOC-palette PNG pseudo labels, read back from the map cache this run wrote. With ``evaluator``
    (a :class:`~wsss_bench.metrics.confusion.ConfusionEvaluator`), each label is also scored against
    the ground truth, so the mIoU of the PNGs themselves is known exactly."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        classes, scores = read_maps(cams_dir, image_id)
        label = hard_label(scores.astype(np.float32, copy=False), classes, rule, ignore_band)
        write_index_png(out_dir / f"{image_id}.png", label, ds.classes.palette)
        if evaluator is not None:
            evaluator.update(label, ds.load_mask(image_id), image_id=image_id)


def pseudo_json(record: dict[str, Any], threshold: float | None, threshold_rule: str,
                labels_miou: float | None = None, ignore_band: tuple[float, float] | None = None,
                record_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``wsss-bench-pseudo.json`` content for PNGs made from pseudo-label ``record``:
    ``{"format": "wsss-bench-pseudo", "version": 1, "record", "record_file", "method", "settings",
    "fingerprint", "dataset", "split", "num_images", "miou" (the record's best-threshold mIoU),
    "threshold" (the threshold the PNGs were made at; for a power rule its equivalent constant),
    "threshold_rule" ("best" | "native" | "calibrated" | "value"), "labels_miou" (the mIoU of the PNGs
    themselves), "ignore_band"}``. It has no ``kind``/``metrics`` keys, so report readers never take
    it for a record."""
    settings = record.get("settings")
    return {
        "format": PSEUDO_FORMAT, "version": PSEUDO_VERSION, "record": record.get("name"),
        "record_file": None if record_file is None else os.path.abspath(record_file),
        "method": record.get("method"),
        "settings": settings.get("name") if isinstance(settings, dict) else settings,
        "fingerprint": record.get("fingerprint"), "dataset": record.get("dataset"), "split": record.get("split"),
        "num_images": record.get("num_images"), "miou": (record.get("metrics") or {}).get("miou"),
        "threshold": None if threshold is None else float(threshold), "threshold_rule": threshold_rule,
        "labels_miou": None if labels_miou is None else float(labels_miou),
        "ignore_band": None if ignore_band is None else [float(v) for v in ignore_band],
    }


def write_pseudo_json(pseudo_dir: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Write ``content`` (from :func:`pseudo_json`) as ``<pseudo_dir>/wsss-bench-pseudo.json``, atomically."""
    path = Path(pseudo_dir) / PSEUDO_JSON
    atomic_write_json(path, content)
    return path
