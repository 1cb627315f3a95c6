"""The number each method's official evaluation script prints, from our confusion counts.

Each function takes the confusion of the same hard labels the script would score and reproduces
the script's own arithmetic, operation for operation (read from the official repositories; no
code copied). The protocol number (:func:`~wsss_bench.metrics.functional.metrics_from_confusion`)
and these differ in which classes enter the mean and how, never in the pixel counts:

``irn`` (jiwoon-ahn/irn ``step/eval_cam.py``): chainercv's ``calc_semantic_segmentation_confusion``
    grows the matrix to (largest label seen + 1) classes, where "seen" includes predictions on
    ignored pixels (chainercv reads 255 as -1 and skips those pixels only when counting); IoU is
    ``diag / (gt + pred - diag)`` and the mean is ``np.nanmean``, so classes with no pixel at all
    drop out: the protocol's definition, up to floating-point summation order. Its predictions
    use the classes of the map files (``keys``) and ``m > cam_eval_thres`` (0.15; a constant
    background plane and an argmax, ties to the background).
``edam`` (allenwu97/EDAM ``eval.py``): per class TP, P (predicted), T (ground truth) counted in
    32-bit C ints (``multiprocessing.Value('i')``; they wrap past 2^31), IoU = TP / (T + P - TP +
    1e-10), and a plain ``np.mean`` over all classes: a class with no pixel counts as IoU 0, so
    the number drops when the split lacks a class. Its ``--type npy`` predictions use the classes
    of the map files and ``m > theta`` (argmax over a ``theta`` plane and the maps).
``toco`` (zwyang6/MoRe ``utils/evaluate.py`` ``scores``, ToCo's): a float64 histogram over
    ground truth in 0..C-1 (255 and anything >= C ignored); IoU as above; ``np.nanmean`` over the
    classes present in the ground truth only, so a class predicted but absent from the ground
    truth is dropped instead of counting as 0. Its predictions use the ground-truth image labels
    and set ``m <= bkg_thre`` (0.5) to background.

GETAM has no script of this kind (its pseudo labels are made during training), so no entry.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

SCRIPTS = ("irn", "edam", "toco")

#: The official script of each adapter whose code base has one.
ADAPTER_SCRIPTS = {"cam": "irn", "edam": "edam", "more": "toco"}

SOURCES = {
    "irn": "jiwoon-ahn/irn step/eval_cam.py (chainercv confusion, nanmean)",
    "edam": "allenwu97/EDAM eval.py (do_python_eval: plain mean over all classes)",
    "toco": "zwyang6/MoRe utils/evaluate.py scores (ToCo: nanmean over classes present in the ground truth)",
}

#: Each script's own threshold (IRN ``cam_eval_thres``, EDAM ``theta``, ToCo/MoRe ``bkg_thre``).
DEFAULT_RULES = {"irn": ("constant", 0.15), "edam": ("constant", 0.5), "toco": ("constant", 0.5)}

#: Which label set the script's own predictions use: the map files' classes, or the ground truth's.
LABEL_SETS = {"irn": "maps", "edam": "maps", "toco": "gt"}


def _split(conf: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] not in (c.shape[1], c.shape[1] + 1):
        raise ValueError(f"expected a C x C or (C+1) x C confusion, got shape {c.shape}")
    C = c.shape[1]
    ignored = c[C] if c.shape[0] == C + 1 else np.zeros(C, dtype=np.int64)
    return c[:C], ignored


def irn_miou(conf: Any) -> float:
    """IRN ``eval_cam.py``'s ``np.nanmean(iou)``. ``conf``: ``(C+1) x C`` with the last row counting
    ignored pixels by predicted class (they set chainercv's matrix size), or C x C (then no
    prediction on an ignored pixel is assumed to exceed the largest label otherwise seen)."""
    valid, ignored = _split(conf)
    seen_gt = np.nonzero(valid.sum(axis=1))[0]
    seen_pred = np.nonzero(valid.sum(axis=0) + ignored)[0]
    if not seen_gt.size and not seen_pred.size:
        return float("nan")
    n_class = int(max(seen_gt.max(initial=0), seen_pred.max(initial=0))) + 1
    confusion = valid[:n_class, :n_class]
    gtj = confusion.sum(axis=1)
    resj = confusion.sum(axis=0)
    gtjresj = np.diag(confusion)
    denominator = gtj + resj - gtjresj
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        iou = gtjresj / denominator
        return float(np.nanmean(iou))


def _c_int(v: int) -> int:
    """A value stored in a 32-bit C int (ctypes wraps it silently)."""
    return (int(v) + 2**31) % 2**32 - 2**31


def edam_miou(conf: Any) -> float:
    """EDAM ``eval.py``'s ``np.mean(np.array(IoU))`` over all C classes (a fraction; it logs x100)."""
    valid, _ = _split(conf)
    TP = [_c_int(v) for v in np.diag(valid)]
    P = [_c_int(v) for v in valid.sum(axis=0)]
    T = [_c_int(v) for v in valid.sum(axis=1)]
    IoU = [TP[i] / (T[i] + P[i] - TP[i] + 1e-10) for i in range(valid.shape[0])]
    return float(np.mean(np.array(IoU)))


def toco_miou(conf: Any) -> float:
    """ToCo/MoRe ``scores()``'s ``mean_iu``: nanmean of IoU over the classes present in the gt."""
    valid, _ = _split(conf)
    hist = valid.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        present = hist.sum(axis=1) > 0
        return float(np.nanmean(iu[present]))


_FUNCS = {"irn": irn_miou, "edam": edam_miou, "toco": toco_miou}


def official_miou(script: str, conf: Any) -> float:
    """The mIoU (a fraction) that ``script`` (irn, edam or toco) computes from these counts."""
    if script not in _FUNCS:
        raise ValueError(f"unknown official script {script!r} (expected {', '.join(SCRIPTS)})")
    return _FUNCS[script](conf)


def official_entry(script: str, conf: Any, **fields: Any) -> dict[str, Any]:
    """A record entry: ``{script, source, label_set, miou}`` (``miou`` None when undefined)."""
    v = official_miou(script, conf)
    return {"script": script, "source": SOURCES[script], "label_set": LABEL_SETS[script],
            "miou": v if np.isfinite(v) else None, **fields}


def official_for_adapter(adapter: str, native_conf: Any) -> dict[str, Any] | None:
    """The official number of adapter ``adapter`` (cam, edam, more) from the native confusion
    (``SweepEvaluator.native_confusion(with_ignore=True)`` of a run whose label set is the one the
    script uses, see :data:`LABEL_SETS`), or None for adapters without an official script."""
    script = ADAPTER_SCRIPTS.get(adapter)
    return None if script is None else official_entry(script, native_conf)
