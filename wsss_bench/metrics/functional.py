"""Metrics from confusion matrices, as docs/protocol.md defines them (pure functions, no I/O, no torch).

A confusion matrix ``conf[g, p]`` counts pixels with ground truth ``g`` predicted as ``p`` over
non-ignored pixels. For class c: TP = conf[c, c], FP = column sum - TP, FN = row sum - TP.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np


def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.int64)


def counts_from_confusion(conf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (TP, FP, FN) int64 arrays from a C x C (or [..., C, C]) confusion matrix
    (numpy or torch)."""
    c = _numpy(conf)
    tp = np.diagonal(c, axis1=-2, axis2=-1).copy()
    fp = c.sum(axis=-2) - tp
    fn = c.sum(axis=-1) - tp
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def miou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """mIoU over classes with TP + FP + FN > 0 (last axis = classes); NaN where no class is valid."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    union = tp + fp + fn
    iou = _ratio(tp, union)
    valid = union > 0
    n = valid.sum(axis=-1)
    s = np.where(valid, iou, 0.0).sum(axis=-1)
    return np.divide(s, n, out=np.full(np.shape(s), np.nan), where=n > 0)


def _list(a: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in a]


def metrics_from_confusion(conf: Any) -> dict[str, Any]:
    """All protocol metrics of one C x C confusion matrix (rows: ground truth, columns: prediction).

    Per-class lists are in class order with ``None`` where undefined (0/0). ``miou`` averages IoU
    over the ``num_valid_classes`` classes with TP + FP + FN > 0.
    """
    return metrics_from_counts(*counts_from_confusion(conf))


def metrics_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
    """All protocol metrics from per-class TP, FP, FN (int arrays [C]).

    The counted pixels are those with a ground-truth class: sum(TP + FN). Pixel accuracy is
    sum(TP) over them; frequency-weighted IoU weighs IoU_c by (TP_c + FN_c) / pixels.
    """
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    union = tp + fp + fn
    iou = _ratio(tp, union)
    valid = union > 0
    gt_count = tp + fn
    total = int(gt_count.sum())
    pixel_acc = float(tp.sum() / total) if total else float("nan")
    freq = gt_count / total if total else np.zeros_like(gt_count, dtype=np.float64)
    fw = float(np.sum(freq[valid] * iou[valid])) if total else float("nan")
    n_valid = int(valid.sum())
    miou = float(iou[valid].mean()) if n_valid else float("nan")
    return {
        "miou": None if not math.isfinite(miou) else miou,
        "iou": _list(iou),
        "precision": _list(_ratio(tp, tp + fp)),
        "recall": _list(_ratio(tp, tp + fn)),
        "fp_ratio": _list(_ratio(fp, union)),
        "fn_ratio": _list(_ratio(fn, union)),
        "pixel_accuracy": None if not math.isfinite(pixel_acc) else pixel_acc,
        "fw_iou": None if not math.isfinite(fw) else fw,
        "num_valid_classes": n_valid,
        "num_pixels": total,
    }


def is_calibration_id(image_id: str) -> bool:
    """docs/protocol.md's calibration subset: the id's SHA-1, read as an integer, divisible by 10."""
    return int(hashlib.sha1(image_id.encode("utf-8")).hexdigest(), 16) % 10 == 0
