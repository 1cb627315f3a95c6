"""One-pass threshold sweep over localisation maps (PROTOCOL.md, "Pseudo-label quality").

For an image with label set L and maps S_c (c in L), let m = max_c S_c clamped to [0, 1] and
k = argmax (lowest class index wins ties). With T thresholds t_j = j / T (j = 0..T-1), the pseudo
label at threshold j is k where floor(T * m) >= j and background elsewhere.

Each pixel is counted once into a histogram over (gt class, predicted foreground class, score bin
b = floor(T * m) in 0..T). A reverse cumulative sum over the bins gives, for every threshold at
once, the count of pixels of (g, p) with b >= j, which is exactly the confusion matrix at j:
conf_j[g, p] = sum_{b >= j} H[g, p, b] for p >= 1, and conf_j[g, 0] is the rest of row g.
This is wsolevaluation's idea (every threshold from one histogram) with classes.

Memory is O(C^2 T) for the split (two histograms: the calibration subset and the rest) plus, per
image, TP/FP/FN of the classes involved at every threshold (for paired bootstrap at any
threshold chosen afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import (
    is_calibration_id,
    metrics_from_confusion,
    miou_from_counts,
)

IGNORE_INDEX = 255


def quantise_scores(m: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """Score bin floor(T * m) of the clamped top score, int64 in 0..T (float32 arithmetic)."""
    m = m.float().clamp(0.0, 1.0)
    # m * T >= 0, so truncation toward zero is the floor; int32 keeps the pixel pass light
    return (m * num_thresholds).to(torch.int32).clamp_(0, num_thresholds)


def top_class(scores: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, class index) per pixel: the max over the K maps and its class (classes ascending, so the
    first maximal map, as torch.max returns it, is the lowest class index)."""
    scores = scores.float()
    if scores.shape[0] == 1:
        return scores[0], classes[0].expand(scores.shape[1:])
    m, k = scores.max(dim=0)
    return m, classes[k]


class SweepEvaluator:
    """Accumulates the exact confusion matrix at every threshold of the protocol, in one pass.

    ``update(scores, classes, gt, image_id)``: ``scores`` float [K, H, W] (values clamped to
    [0, 1]), ``classes`` the K class indices (1-based, as in masks), ``gt`` uint8/int [H, W]
    with 255 ignored. Works on CPU and CUDA tensors (state lives on ``device``).
    """

    def __init__(self, num_classes: int, num_thresholds: int = 100, device: str | torch.device = "cpu",
                 ignore_index: int = IGNORE_INDEX, keep_per_image: bool = True):
        if num_thresholds < 1:
            raise ValueError("num_thresholds must be >= 1")
        self.num_classes = int(num_classes)
        self.T = int(num_thresholds)
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        # [subset (0 = evaluation rest, 1 = calibration), gt, pred, bin]
        self.hist = torch.zeros(2, num_classes, num_classes, self.T + 1, dtype=torch.int64, device=self.device)
        self.keep_per_image = keep_per_image
        self.image_ids: list[str] = []
        self.calibration: list[bool] = []
        self._per_image: list[tuple[np.ndarray, np.ndarray]] = []  # (classes [n], counts [T, n, 3] int32)

    @property
    def thresholds(self) -> list[float]:
        return [j / self.T for j in range(self.T)]

    # -- accumulation ---------------------------------------------------------------------------

    def update(self, scores: Any, classes: Sequence[int] | torch.Tensor, gt: Any,
               image_id: str | None = None, name: str | None = None) -> None:
        dev = self.device
        C, T = self.num_classes, self.T
        gt_t = torch.as_tensor(np.asarray(gt) if not isinstance(gt, torch.Tensor) else gt).to(dev)
        if gt_t.ndim != 2:
            raise WsssBenchError(f"ground truth must be 2-D, got shape {tuple(gt_t.shape)}", name)
        s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores).to(dev)
        cls = torch.as_tensor(np.asarray(classes, dtype=np.int64) if not isinstance(classes, torch.Tensor)
                              else classes).to(dev).long().reshape(-1)
        if s.ndim == 2:
            s = s[None]
        if s.ndim != 3 or s.shape[0] != cls.numel():
            raise WsssBenchError(f"maps of shape {tuple(s.shape)} do not match {cls.numel()} classes", name)
        if tuple(s.shape[1:]) != tuple(gt_t.shape):
            raise WsssBenchError(f"map size {tuple(s.shape[1:])} differs from ground truth "
                                 f"{tuple(gt_t.shape)}", name)
        if cls.numel():
            if bool(((cls < 1) | (cls >= C)).any()):
                raise WsssBenchError(f"map class {int(cls[(cls < 1) | (cls >= C)][0])} is outside the "
                                     f"foreground classes 1..{C - 1}", name)
            if cls.unique().numel() != cls.numel():
                raise WsssBenchError("a class is listed twice in the maps", name)
            order = torch.argsort(cls)
            cls, s = cls[order], s[order]

        gflat = gt_t.reshape(-1)
        if gflat.dtype != torch.uint8:
            if gflat.is_floating_point():
                raise WsssBenchError(f"ground truth must be integer, got {gflat.dtype}", name)
            if gflat.numel() and (int(gflat.min()) < 0 or int(gflat.max()) > 255):
                raise WsssBenchError("ground-truth values must be in 0..255", name)
        gflat = gflat.to(torch.int32)
        present = torch.bincount(gflat, minlength=256)
        bad = present[C:self.ignore_index].nonzero()
        if bad.numel():
            raise WsssBenchError(f"ground-truth value {int(bad[0]) + C} is outside the class set "
                                 f"(0..{C - 1}, {self.ignore_index} ignored)", name)
        gt_classes = present[:C].nonzero().reshape(-1)
        involved = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long, device=dev), gt_classes, cls]))
        n = involved.numel()
        # compact class index per gt value; ignored (and any value not involved) -> row n, dropped below
        lut = torch.full((256,), n, dtype=torch.int32, device=dev)
        lut[involved] = torch.arange(n, device=dev, dtype=torch.int32)

        if cls.numel():
            m, k = top_class(s, lut[cls])
            if not (math.isfinite(float(m.amax())) and math.isfinite(float(m.amin()))):
                raise WsssBenchError("maps contain NaN or infinite values", name)
            b = quantise_scores(m, T).reshape(-1)
            p = k.reshape(-1)
        else:  # no class in the image: background everywhere, at every threshold
            b = torch.zeros_like(gflat)
            p = torch.zeros_like(gflat)
        g = lut[gflat.long()]
        idx = (g * n + p) * (T + 1) + b  # int32: (n + 1) * n * (T + 1) is far below 2^31
        size = n * n * (T + 1)
        local = torch.bincount(idx, minlength=size + n * (T + 1))[:size].reshape(n, n, T + 1)

        calib = is_calibration_id(image_id) if image_id is not None else False
        inv = involved
        self.hist[int(calib)].index_put_((inv[:, None], inv[None, :]),
                                         self.hist[int(calib)][inv[:, None], inv[None, :]] + local)
        if self.keep_per_image:
            conf = _confusions_all_thresholds(local, T)  # [T, n, n]
            tp = conf.diagonal(dim1=-2, dim2=-1)
            counts = torch.stack([tp, conf.sum(-2) - tp, conf.sum(-1) - tp], dim=-1)  # [T, n, 3]
            self._per_image.append((inv.cpu().numpy().astype(np.int16), counts.to(torch.int32).cpu().numpy()))
        self.image_ids.append(image_id if image_id is not None else str(len(self.image_ids)))
        self.calibration.append(calib)

    def merge(self, other: SweepEvaluator) -> SweepEvaluator:
        if (other.num_classes, other.T) != (self.num_classes, self.T):
            raise ValueError("cannot merge sweep evaluators of different shapes")
        self.hist += other.hist.to(self.device)
        self.image_ids += other.image_ids
        self.calibration += other.calibration
        self._per_image += other._per_image
        return self

    # -- results -------------------------------------------------------------------------------

    def confusion(self, j: int, subset: str = "all") -> torch.Tensor:
        """C x C confusion at threshold index ``j`` for ``all``, ``calibration`` or ``evaluation``."""
        h = {"all": self.hist.sum(0), "calibration": self.hist[1], "evaluation": self.hist[0]}[subset]
        return _confusion_at(h, j)

    def confusions(self, subset: str = "all") -> torch.Tensor:
        """[T, C, C] confusion matrices at every threshold."""
        h = {"all": self.hist.sum(0), "calibration": self.hist[1], "evaluation": self.hist[0]}[subset]
        return _confusions_all_thresholds(h, self.T)

    def miou_curve(self, subset: str = "all") -> np.ndarray:
        conf = self.confusions(subset).cpu().numpy()
        tp = np.diagonal(conf, axis1=-2, axis2=-1)
        return miou_from_counts(tp, conf.sum(-2) - tp, conf.sum(-1) - tp)

    def threshold_index(self, t: float) -> int:
        """Index j of threshold ``t`` on the grid (rounded, clipped to 0..T-1)."""
        return int(min(max(round(t * self.T), 0), self.T - 1))

    def results(self, native_threshold: float | None = None) -> dict[str, Any]:
        """Record fields: ``metrics`` (at the best threshold), ``sweep``, ``best_threshold``,
        ``calibrated``, and ``native`` when a native threshold is given."""
        curve = self.miou_curve("all")
        best = _argmax(curve)
        out: dict[str, Any] = {
            "sweep": {"thresholds": self.thresholds, "miou": [_f(v) for v in curve]},
            "best_threshold": best / self.T,
            "best_threshold_index": best,
            "metrics": metrics_from_confusion(self.confusion(best)),
        }
        n_cal = int(sum(self.calibration))
        n_eval = len(self.calibration) - n_cal
        if n_cal and n_eval:
            cal_curve = self.miou_curve("calibration")
            jc = _argmax(cal_curve)
            ev = metrics_from_confusion(self.confusion(jc, "evaluation"))
            out["calibrated"] = {"threshold": jc / self.T, "miou": ev["miou"], "num_images": n_eval,
                                 "calibration_images": n_cal, "calibration_miou": _f(cal_curve[jc])}
        else:
            out["calibrated"] = {"threshold": None, "miou": None, "num_images": n_eval,
                                 "calibration_images": n_cal,
                                 "note": "calibration subset or evaluation subset is empty"}
        if native_threshold is not None:
            jn = self.threshold_index(native_threshold)
            out["native"] = {"threshold": float(native_threshold), "threshold_index": jn,
                             "grid_threshold": jn / self.T, "miou": _f(curve[jn]),
                             "metrics": metrics_from_confusion(self.confusion(jn))}
        return out

    def per_image_counts(self, j: int) -> dict[str, np.ndarray]:
        """``ids`` [N] and ``tp``/``fp``/``fn`` int64 [N, C] at threshold index ``j``.

        Rows are sorted by image id, so the order images were seen in does not matter."""
        N, C = len(self._per_image), self.num_classes
        tp = np.zeros((N, C), dtype=np.int64)
        fp = np.zeros_like(tp)
        fn = np.zeros_like(tp)
        order = sorted(range(N), key=lambda i: self.image_ids[i])
        for i, src in enumerate(order):
            inv, counts = self._per_image[src]
            inv = inv.astype(np.int64)
            tp[i, inv] = counts[j, :, 0]
            fp[i, inv] = counts[j, :, 1]
            fn[i, inv] = counts[j, :, 2]
        ids = np.asarray([self.image_ids[i] for i in order], dtype=str)
        return {"ids": ids, "tp": tp, "fp": fp, "fn": fn}


def _f(v: float) -> float | None:
    return None if not math.isfinite(float(v)) else float(v)


def _argmax(curve: np.ndarray) -> int:
    """First index of the maximum, NaN treated as -inf (the lowest best threshold wins ties)."""
    c = np.where(np.isfinite(curve), curve, -np.inf)
    return int(np.argmax(c))


def _confusions_all_thresholds(h: torch.Tensor, T: int) -> torch.Tensor:
    """[T, C, C] confusions from a [C, C, T+1] histogram (see the module docstring)."""
    # rev[..., j] = sum_{b >= j} h[..., b]
    rev = h.flip(-1).cumsum(-1).flip(-1)[..., :T]  # [C, C, T]
    conf = rev.permute(2, 0, 1).clone()  # [T, C, C]
    row_total = h.sum(-1)  # [C, C]: all pixels of (g, p)
    fg_above = conf[:, :, 1:].sum(-1)  # [T, C] predicted foreground at threshold j
    conf[:, :, 0] = row_total.sum(-1)[None, :] - fg_above
    return conf


def _confusion_at(h: torch.Tensor, j: int) -> torch.Tensor:
    above = h[..., j:].sum(-1)  # [C, C]
    conf = above.clone()
    conf[:, 0] = h.sum(-1).sum(-1) - above[:, 1:].sum(-1)
    return conf
