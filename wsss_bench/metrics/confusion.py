"""Streaming confusion-matrix evaluation of hard masks (final segmentation, saved pseudo labels).

State is a C x C int64 tensor with a ``sum`` reduction (torchmetrics' pattern), so merging workers
or ranks is a sum / one all-reduce. Per-image per-class TP/FP/FN are kept for paired bootstrap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import metrics_from_confusion

IGNORE_INDEX = 255


def _as_long(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if device is not None:
        t = t.to(device)
    if t.is_floating_point():
        raise WsssBenchError(f"class maps must be integer, got dtype {t.dtype}")
    return t.long()


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX, name: str | None = None) -> torch.Tensor:
    """C x C int64 confusion of one prediction (rows: ground truth, columns: prediction).

    Values of ``pred`` outside 0..C-1 or of ``gt`` outside 0..C-1 and ``ignore_index`` raise a
    :class:`WsssBenchError` naming the value (and ``name``, the file, when given).
    """
    if pred.shape != gt.shape:
        raise WsssBenchError(f"prediction shape {tuple(pred.shape)} differs from ground truth "
                             f"{tuple(gt.shape)}", name)
    gt = gt.reshape(-1)
    pred = pred.reshape(-1)
    valid = gt != ignore_index
    if gt.numel():
        bad_gt = valid & ((gt < 0) | (gt >= num_classes))
        if bool(bad_gt.any()):
            v = int(gt[bad_gt][0])
            raise WsssBenchError(f"ground-truth value {v} is outside the class set (0..{num_classes - 1}, "
                                 f"{ignore_index} ignored)", name)
        bad_p = (pred < 0) | (pred >= num_classes)
        if bool(bad_p.any()):
            v = int(pred[bad_p][0])
            raise WsssBenchError(f"predicted value {v} is outside the class set (0..{num_classes - 1})", name)
    idx = gt[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class ConfusionEvaluator:
    """Accumulates the confusion matrix of hard masks, image by image, on CPU or GPU.

    >>> ev = ConfusionEvaluator(21)
    >>> ev.update(pred, gt, image_id="2007_000032")   # doctest: +SKIP
    >>> ev.metrics()["miou"]                          # doctest: +SKIP
    """

    def __init__(self, num_classes: int, device: str | torch.device = "cpu",
                 ignore_index: int = IGNORE_INDEX, keep_per_image: bool = True):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        self.keep_per_image = keep_per_image
        self.image_ids: list[str] = []
        self._per_image: list[torch.Tensor] = []  # [3, C] (tp, fp, fn) per image

    def update(self, pred: Any, gt: Any, image_id: str | None = None, name: str | None = None) -> None:
        p = _as_long(pred, self.device)
        g = _as_long(gt, self.device)
        conf = confusion_matrix(p, g, self.num_classes, self.ignore_index, name=name)
        self.confusion += conf
        if self.keep_per_image:
            tp = conf.diagonal()
            self._per_image.append(torch.stack([tp, conf.sum(0) - tp, conf.sum(1) - tp]).cpu())
            self.image_ids.append(image_id if image_id is not None else str(len(self.image_ids)))

    def merge(self, other: ConfusionEvaluator) -> ConfusionEvaluator:
        """Add another evaluator's state (another worker or rank) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge evaluators with different class counts")
        self.confusion += other.confusion.to(self.device)
        self.image_ids += other.image_ids
        self._per_image += other._per_image
        return self

    def per_image_counts(self) -> dict[str, np.ndarray]:
        """``ids`` [N] and ``tp``/``fp``/``fn`` int64 [N, C], rows sorted by image id."""
        order = sorted(range(len(self.image_ids)), key=lambda i: self.image_ids[i])
        if self._per_image:
            arr = torch.stack([self._per_image[i] for i in order]).numpy()
        else:
            arr = np.zeros((0, 3, self.num_classes), dtype=np.int64)
        ids = np.asarray([self.image_ids[i] for i in order], dtype=str)
        return {"ids": ids, "tp": arr[:, 0], "fp": arr[:, 1], "fn": arr[:, 2]}

    def metrics(self) -> dict[str, Any]:
        return metrics_from_confusion(self.confusion)
