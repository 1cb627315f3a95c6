"""One-pass threshold sweep over localisation maps (docs/protocol.md, version 2, "Pseudo-label quality").

For an image with label set L and maps S_c (c in L), m = max_c S_c clamped to [0, 1] (float32)
and k = the first maximal class (lowest index wins ties). At threshold t_j = float32(j / T) the
pseudo label is k where m > t_j, strictly, and background elsewhere; the method's native rule
(:class:`~wsss_bench.metrics.rules.NativeRule`) is one more float32 threshold, evaluated exactly.

Each pixel is counted once into a histogram over (gt class, predicted class, bin), where the bin
is the number of thresholds (grid and native, merged and sorted) strictly below m
(:class:`~wsss_bench.metrics.rules.ThresholdBins`). A pixel is foreground at the i-th merged
threshold exactly where its bin exceeds i, so a reverse cumulative sum over the bins gives the
confusion matrix at every threshold at once, bit-identical to a per-threshold loop. This is
wsolevaluation's idea (every threshold from one histogram) with classes.

State: ``[2, C + 1, C, bins]`` int64 counts (calibration subset / the rest; the extra gt row
counts ignored pixels by predicted class, which IRN's evaluation needs) and, per image, TP/FP/FN
of the classes involved at every threshold (for paired bootstrap at a threshold chosen afterwards).
On CPU the work is numpy (no torch import); on a CUDA device it is torch, with the state there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import is_calibration_id, metrics_from_confusion, miou_from_counts
from wsss_bench.metrics.rules import (
    NativeRule,
    PerImageStore,
    ThresholdBins,
    Workspace,
    check_num_thresholds,
    clamp_scores,
)
from wsss_bench.metrics.rules import top_class as _top_class

IGNORE_INDEX = 255
#: Largest state accepted (81 classes with 10,000 thresholds just fit).
MAX_STATE_BYTES = 1 << 30


@dataclass
class ImageResult:
    """What one image adds to a :class:`SweepEvaluator` (small: safe to send between processes).

    ``rows``: gt classes present (``C`` stands for ignored pixels); ``cols``: 0 then the label set;
    ``local[r, c, b]``: pixel counts; ``classes``/``counts``: per-image TP/FP/FN ``[P, n, 3]`` at
    every position (grid thresholds, then native), or None when per-image counts are not kept.
    """

    image_id: str
    calibration: bool
    rows: np.ndarray
    cols: np.ndarray
    local: Any
    classes: np.ndarray | None = None
    counts: np.ndarray | None = None


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


def _device_name(device: Any) -> str:
    return str(device) if device is not None else "cpu"


def _conf_at_positions(H: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[P, R, C]`` confusions from a ``[R, C, bins]`` histogram at merged positions ``positions``.

    Column 0 is the background: a pixel is predicted as its column's class where its bin exceeds
    the position, and as background otherwise (pixels of column 0, images without maps, always).
    """
    rev = np.cumsum(H[..., ::-1], axis=-1)[..., ::-1]  # rev[..., i] = sum over bins >= i
    above = rev[..., np.asarray(positions) + 1]  # [R, C, P]
    conf = np.ascontiguousarray(np.moveaxis(above, -1, 0))  # [P, R, C]
    conf[:, :, 0] = H.sum(axis=(1, 2))[None, :] - conf[:, :, 1:].sum(axis=2)
    return conf


class SweepEvaluator:
    """Accumulates the exact confusion matrix at every threshold of the protocol, in one pass.

    ``SweepEvaluator(C, T=100, device="cpu", native_rule=("constant", 0.15))``; then
    ``update(scores, classes, gt, image_id)`` per image: ``scores`` float [K, H, W] (numpy or torch;
    clamped to [0, 1]), ``classes`` the K class indices (1-based, as in masks, any order), ``gt``
    uint8/int [H, W] with 255 ignored. ``results()`` gives the record fields. Evaluators of the same
    shape merge by summation (:meth:`merge`), so workers and ranks can each hold one.

    >>> import numpy as np
    >>> ev = SweepEvaluator(3, native_rule=("constant", 0.5))
    >>> ev.update(np.array([[[0.2, 0.7]]], np.float32), [1], np.array([[0, 1]], np.uint8), image_id="a")
    >>> ev.results()["native"]["miou"]
    1.0
    """

    def __init__(self, num_classes: int, num_thresholds: int = 100, device: Any = "cpu",
                 ignore_index: int = IGNORE_INDEX, keep_per_image: bool = True, native_rule: Any = None,
                 backend: str = "auto"):
        C = int(num_classes)
        if not 2 <= C <= 255:
            raise WsssBenchError(f"the number of classes must be in 2..255 (background included), got {C}")
        if not C <= int(ignore_index) <= 255:
            raise WsssBenchError(f"the ignore index must be in {C}..255, got {ignore_index}")
        self.num_classes = C
        self.T = check_num_thresholds(num_thresholds)
        self.ignore_index = int(ignore_index)
        self.native_rule = NativeRule.parse(native_rule)
        self.bins = ThresholdBins(self.T, None if self.native_rule is None else self.native_rule.threshold32)
        self.keep_per_image = keep_per_image
        dev = _device_name(device)
        if backend == "auto":
            backend = "numpy" if dev == "cpu" else "torch"
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be auto, numpy or torch, got {backend!r}")
        if backend == "numpy" and dev != "cpu":
            raise ValueError("the numpy backend runs on the CPU only")
        self.backend = backend
        shape = (2, C + 1, C, self.bins.num_bins)
        if 8 * math.prod(shape) > MAX_STATE_BYTES:
            raise WsssBenchError(f"{self.T} thresholds over {C} classes need {8 * math.prod(shape) / 2**30:.1f} GiB "
                                 f"of counts; use fewer thresholds")
        if backend == "numpy":
            self.device = "cpu"
            self._hist: Any = np.zeros(shape, dtype=np.int64)
        else:
            import torch

            self.device = torch.device(device)
            self._hist = torch.zeros(shape, dtype=torch.int64, device=self.device)
            self._merged_t = torch.from_numpy(self.bins.merged).to(self.device)
        self.image_ids: list[str] = []
        self.calibration: list[bool] = []
        # per image: classes [n] int16 and TP/FP/FN [n, P, 3] int32 at every position
        self._store = PerImageStore((self.bins.positions.size, 3), np.int32)
        self._ws = Workspace()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable without the scratch buffers (sent back from worker processes)."""
        state = dict(self.__dict__)
        state["_ws"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ws = Workspace()

    @property
    def _per_image(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-image (classes [n] int16, TP/FP/FN [n, P, 3] int32) as a list (gathered over ranks
        by ``all_reduce``; assigning a list replaces them)."""
        return self._store.to_list()

    @_per_image.setter
    def _per_image(self, items: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._store = PerImageStore.from_list(items, (self.bins.positions.size, 3), np.int32)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the counts over the ranks of ``group`` (torch.distributed) and gather the per-image
        state, in place; every rank must call it. Imports torch."""
        from wsss_bench.metrics.sync import sync_evaluator_state

        sync_evaluator_state(self, ("image_ids", "calibration", "_per_image"), group)

    # -- state --------------------------------------------------------------------------------

    @property
    def hist(self) -> Any:
        """The state as a torch tensor (on CPU a view sharing memory with the numpy array), for
        in-place reductions such as ``torch.distributed.all_reduce``. Imports torch."""
        if self.backend == "numpy":
            import torch

            return torch.from_numpy(self._hist)
        return self._hist

    def state(self) -> np.ndarray:
        """The ``[2, C + 1, C, bins]`` counts as a numpy array (a copy when on a device)."""
        return self._hist if self.backend == "numpy" else self._hist.cpu().numpy()

    @property
    def thresholds(self) -> list[float]:
        """The grid thresholds as decimals j / T (each compared as float32(j / T))."""
        return [j / self.T for j in range(self.T)]

    # -- accumulation ---------------------------------------------------------------------------

    def update(self, scores: Any, classes: Sequence[int] | Any, gt: Any, image_id: str | None = None,
               name: str | None = None, gt_hist: np.ndarray | None = None, checked: bool = False) -> None:
        """Add one image. ``gt_hist``: its 256-bin histogram when the reader has it; ``checked``:
        the maps are known finite and within [0, 1] (the clamp and NaN check are skipped)."""
        self.add(self.image_result(scores, classes, gt, image_id, name, gt_hist, checked))

    def image_result(self, scores: Any, classes: Sequence[int] | Any, gt: Any, image_id: str | None = None,
                     name: str | None = None, gt_hist: np.ndarray | None = None,
                     checked: bool = False) -> ImageResult:
        """What :meth:`update` would add, without adding it (for worker processes).

        ``scores`` may also be a list of 2-D maps (no stacking copy)."""
        if image_id is None:
            image_id = str(len(self.image_ids))
        cls = np.asarray(classes.detach().cpu().numpy() if _is_torch(classes) else classes,
                         dtype=np.int64).reshape(-1)
        C = self.num_classes
        if cls.size:
            if cls.min() < 1 or cls.max() >= C:
                bad = cls[(cls < 1) | (cls >= C)][0]
                raise WsssBenchError(f"map class {int(bad)} is outside the foreground classes 1..{C - 1}", name)
            if np.unique(cls).size != cls.size:
                raise WsssBenchError("a class is listed twice in the maps", name)
        if self.backend == "torch":
            rows, cols, local = self._image_hist_torch(scores, cls, gt, name, checked)
            local_np = local.cpu().numpy() if self.keep_per_image else None
        else:
            rows, cols, local = self._image_hist_numpy(scores, cls, gt, name, gt_hist, checked)
            local_np = local
        res = ImageResult(image_id, is_calibration_id(image_id), rows, cols, local)
        if self.keep_per_image:
            res.classes, res.counts = self._per_image_counts(rows, cols, local_np)
        return res

    def _check_gt(self, gt_hist: np.ndarray, name: str | None) -> np.ndarray:
        C = self.num_classes
        bad = np.nonzero(gt_hist[C:])[0] + C
        bad = bad[bad != self.ignore_index]
        if bad.size:
            raise WsssBenchError(f"ground-truth value {int(bad[0])} is outside the class set "
                                 f"(0..{C - 1}, {self.ignore_index} ignored)", name)
        rows = np.nonzero(gt_hist[:C])[0]
        if gt_hist[self.ignore_index]:
            rows = np.append(rows, C)
        return rows.astype(np.int64)

    def _image_hist_numpy(self, scores: Any, cls: np.ndarray, gt: Any, name: str | None,
                          gt_hist: np.ndarray | None, checked: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        C, NB = self.num_classes, self.bins.num_bins
        g = gt.detach().cpu().numpy() if _is_torch(gt) else np.asarray(gt)
        if g.ndim != 2:
            raise WsssBenchError(f"ground truth must be 2-D, got shape {tuple(g.shape)}", name)
        if g.dtype != np.uint8:
            if not np.issubdtype(g.dtype, np.integer):
                raise WsssBenchError(f"ground truth must be integer, got {g.dtype}", name)
            if g.size and (int(g.min()) < 0 or int(g.max()) > 255):
                raise WsssBenchError("ground-truth values must be in 0..255", name)
            g = g.astype(np.uint8)
        if gt_hist is None:
            gt_hist = np.bincount(g.reshape(-1), minlength=256)
        gt_hist = np.asarray(gt_hist)
        rows = self._check_gt(gt_hist, name)
        maps = self._as_map_list(scores, cls.size, g.shape, name)
        order = np.argsort(cls, kind="stable")
        cols = np.concatenate([[0], cls[order]]).astype(np.int64)
        nc = cols.size
        if nc == 1:  # no class: background everywhere, every pixel in bin 0
            local = np.zeros((rows.size, 1, NB), dtype=np.int64)
            local[:, 0, 0] = np.asarray(gt_hist)[np.where(rows == C, self.ignore_index, rows)]
            return rows, cols, local
        ws = self._ws
        n = g.size
        m, k = _top_class([maps[i] for i in order], [NB * j for j in range(1, nc)], ws)
        m = np.ravel(m)
        if not checked:
            m = clamp_scores(m, name, out=ws.get("clamped", n, np.float32))
        # gt row of each pixel: its class, or ``ign`` for ignored pixels (values >= C other than the
        # ignore index were refused above); a bitwise and is far cheaper than a minimum
        idx = ws.get("idx", n, np.int32)
        gflat = g.reshape(-1)
        if not gt_hist[self.ignore_index]:
            ign = C
            np.copyto(idx, gflat, casting="unsafe")
        elif C <= 127 and self.ignore_index == 255:
            ign = 127
            np.copyto(idx, np.bitwise_and(gflat, np.uint8(127), out=ws.get("g8", n, np.uint8)), casting="unsafe")
        else:
            ign = C
            np.copyto(idx, gflat, casting="unsafe")
            np.minimum(idx, np.int32(C), out=idx)
        idx *= np.int32(nc * NB)
        idx += self.bins.counts(m, ws)
        if isinstance(k, np.ndarray):
            idx += np.ravel(k)
        else:
            idx += np.int32(k)
        h = np.bincount(idx, minlength=(ign + 1) * nc * NB).reshape(ign + 1, nc, NB)
        return rows, cols, h[np.where(rows == C, ign, rows)]

    @staticmethod
    def _as_map_list(scores: Any, K: int, shape: tuple[int, ...], name: str | None) -> list[np.ndarray]:
        if isinstance(scores, (list, tuple)):
            maps = [np.asarray(s, dtype=np.float32) for s in scores]
        else:
            s = scores.detach().cpu().numpy() if _is_torch(scores) else np.asarray(scores)
            s = s.astype(np.float32, copy=False)
            if s.ndim == 2:
                s = s[None]
            if s.ndim != 3:
                raise WsssBenchError(f"maps must be [K, H, W], got shape {tuple(s.shape)}", name)
            maps = list(s)
        if len(maps) != K:
            raise WsssBenchError(f"{len(maps)} maps do not match {K} classes", name)
        for mp in maps:
            if mp.shape != tuple(shape):
                raise WsssBenchError(f"map size {tuple(mp.shape)} differs from ground truth {tuple(shape)}", name)
        return maps

    def _image_hist_torch(self, scores: Any, cls: np.ndarray, gt: Any, name: str | None,
                          checked: bool) -> tuple[np.ndarray, np.ndarray, Any]:
        import torch

        C, NB, dev = self.num_classes, self.bins.num_bins, self.device
        g = gt if _is_torch(gt) else torch.from_numpy(np.ascontiguousarray(gt))
        g = g.to(dev)
        if g.ndim != 2:
            raise WsssBenchError(f"ground truth must be 2-D, got shape {tuple(g.shape)}", name)
        if g.is_floating_point():
            raise WsssBenchError(f"ground truth must be integer, got {g.dtype}", name)
        g = g.long()
        if g.numel() and (int(g.min()) < 0 or int(g.max()) > 255):
            raise WsssBenchError("ground-truth values must be in 0..255", name)
        gt_hist = torch.bincount(g.reshape(-1), minlength=256).cpu().numpy()
        rows = self._check_gt(gt_hist, name)
        if isinstance(scores, (list, tuple)):
            s = torch.stack([torch.as_tensor(x) for x in scores]) if len(scores) else torch.zeros(0, *g.shape)
        else:
            s = scores if _is_torch(scores) else torch.from_numpy(np.asarray(scores))
        s = s.to(dev).float()
        if s.ndim == 2:
            s = s[None]
        if s.ndim != 3 or s.shape[0] != cls.size:
            raise WsssBenchError(f"maps of shape {tuple(s.shape)} do not match {cls.size} classes", name)
        if tuple(s.shape[1:]) != tuple(g.shape):
            raise WsssBenchError(f"map size {tuple(s.shape[1:])} differs from ground truth {tuple(g.shape)}", name)
        order = np.argsort(cls, kind="stable")
        cols = np.concatenate([[0], cls[order]]).astype(np.int64)
        nc = cols.size
        rows_t = torch.from_numpy(rows).to(dev)
        if nc == 1:
            local = torch.zeros(rows.size, 1, NB, dtype=torch.int64, device=dev)
            vals = torch.from_numpy(gt_hist[np.where(rows == C, self.ignore_index, rows)]).to(dev)
            local[:, 0, 0] = vals
            return rows, cols, local
        s = s[torch.from_numpy(order).to(dev)]
        m = s[0].clone()
        k = torch.full_like(g, NB)
        for i in range(1, nc - 1):
            better = s[i] > m
            m = torch.maximum(m, s[i])
            k = torch.where(better, torch.full_like(k, NB * (i + 1)), k)
        if not checked:
            if bool(torch.isnan(m).any()):
                raise WsssBenchError("maps contain NaN values", name)
            m = m.clamp(0.0, 1.0)
        b = torch.bucketize(m, self._merged_t, right=False)  # number of merged thresholds < m
        idx = g.clamp(max=C) * (nc * NB) + k + b
        h = torch.bincount(idx.reshape(-1), minlength=(C + 1) * nc * NB).reshape(C + 1, nc, NB)
        return rows, cols, h[rows_t]

    def _per_image_counts(self, rows: np.ndarray, cols: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        C = self.num_classes
        valid = rows < C
        r, H = rows[valid], local[valid]
        classes = np.union1d(r, cols)
        n = classes.size
        P = self.bins.positions.size
        counts = np.zeros((P, n, 3), dtype=np.int32)
        if r.size:
            conf = _conf_at_positions(H, self.bins.positions)  # [P, nr, nc]
            ri = np.searchsorted(classes, r)
            ci = np.searchsorted(classes, cols)
            full = np.zeros((P, n, n), dtype=np.int64)
            full[:, ri[:, None], ci[None, :]] = conf
            tp = np.diagonal(full, axis1=1, axis2=2)
            counts[..., 0] = tp
            counts[..., 1] = full.sum(axis=1) - tp
            counts[..., 2] = full.sum(axis=2) - tp
        return classes.astype(np.int16), counts

    def add(self, res: ImageResult) -> None:
        """Add an :class:`ImageResult` (from :meth:`image_result`, possibly another process)."""
        sub = int(res.calibration)
        if self.backend == "numpy":
            self._hist[sub][np.ix_(res.rows, res.cols)] += np.asarray(res.local)
        else:
            import torch

            local = res.local if _is_torch(res.local) else torch.from_numpy(np.asarray(res.local))
            ri = torch.from_numpy(res.rows).to(self.device)
            ci = torch.from_numpy(res.cols).to(self.device)
            self._hist[sub].index_put_((ri[:, None], ci[None, :]), local.to(self.device), accumulate=True)
        if self.keep_per_image:
            if res.counts is None:
                raise ValueError("this evaluator keeps per-image counts; the image result has none")
            self._store.append(res.classes, np.moveaxis(res.counts, 1, 0))
        self.image_ids.append(res.image_id)
        self.calibration.append(res.calibration)

    def merge(self, other: SweepEvaluator) -> SweepEvaluator:
        """Add another evaluator's state (another worker or rank) into this one."""
        if (other.num_classes, other.T, other.native_rule) != (self.num_classes, self.T, self.native_rule):
            raise ValueError("cannot merge sweep evaluators of different classes, thresholds or native rule")
        if self.backend == "numpy":
            self._hist += other.state()
        else:
            import torch

            self._hist += torch.as_tensor(other.state() if other.backend == "numpy" else other._hist).to(self.device)
        self.image_ids += other.image_ids
        self.calibration += other.calibration
        self._store.extend(other._store)
        return self

    # -- results -------------------------------------------------------------------------------

    def _subset(self, subset: str) -> np.ndarray:
        h = self.state()
        if subset == "all":
            return h.sum(axis=0)
        if subset in ("calibration", "evaluation"):
            return h[1] if subset == "calibration" else h[0]
        raise ValueError(f"subset must be all, calibration or evaluation, got {subset!r}")

    def confusions(self, subset: str = "all") -> np.ndarray:
        """``[T, C, C]`` int64 confusion matrices at every grid threshold (rows: gt, cols: prediction)."""
        return _conf_at_positions(self._subset(subset)[: self.num_classes], self.bins.grid_pos)

    def confusion(self, j: int, subset: str = "all") -> np.ndarray:
        """C x C confusion at grid threshold index ``j``."""
        if not 0 <= int(j) < self.T:
            raise IndexError(f"threshold index {j} outside 0..{self.T - 1}")
        return _conf_at_positions(self._subset(subset)[: self.num_classes], self.bins.grid_pos[[int(j)]])[0]

    def native_confusion(self, subset: str = "all", with_ignore: bool = False) -> np.ndarray:
        """The confusion under the native rule: C x C, or ``[C + 1, C]`` with the last row counting
        the ignored pixels by predicted class (what IRN's chainercv evaluation looks at)."""
        if self.native_rule is None:
            raise ValueError("this evaluator has no native rule")
        h = self._subset(subset)
        if not with_ignore:
            h = h[: self.num_classes]
        return _conf_at_positions(h, [self.bins.native_pos])[0]

    def miou_curve(self, subset: str = "all") -> np.ndarray:
        conf = self.confusions(subset)
        tp = np.diagonal(conf, axis1=-2, axis2=-1)
        return miou_from_counts(tp, conf.sum(-2) - tp, conf.sum(-1) - tp)

    def threshold_index(self, t: float) -> int:
        """Index j of the grid threshold nearest ``t`` (clipped to 0..T-1)."""
        return int(min(max(round(t * self.T), 0), self.T - 1))

    def results(self, native_threshold: float | None = None) -> dict[str, Any]:
        """Record fields: ``sweep`` (the curve), ``best_threshold`` (+ ``_index``), ``metrics`` (at
        the best threshold), ``calibrated`` and, with a native rule, ``native`` {rule, value,
        threshold, miou, metrics}.

        ``native_threshold`` is the version-1 interface, kept until the runner passes the rule at
        construction: a constant on the grid is exact (and the entry keeps ``threshold_index``);
        one off the grid is read at the nearest grid threshold and marked ``exact: false``.
        """
        curve = self.miou_curve("all")
        confs = self.confusions("all")
        best = _argmax(curve)
        out: dict[str, Any] = {
            "sweep": {"thresholds": self.thresholds, "miou": [_f(v) for v in curve]},
            "best_threshold": best / self.T,
            "best_threshold_index": best,
            "metrics": metrics_from_confusion(confs[best]),
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
        if self.native_rule is not None:
            met = metrics_from_confusion(self.native_confusion())
            out["native"] = {**self.native_rule.to_dict(), "miou": met["miou"], "metrics": met}
        elif native_threshold is not None:
            jn = self.threshold_index(native_threshold)
            exact = bool(np.float32(native_threshold) == self.bins.grid[jn])
            out["native"] = {"rule": "constant", "value": float(native_threshold), "threshold": float(native_threshold),
                             "exact": exact, "threshold_index": jn, "grid_threshold": jn / self.T,
                             "miou": _f(curve[jn]), "metrics": metrics_from_confusion(confs[jn])}
        return out

    def per_image_counts(self, j: int | str) -> dict[str, np.ndarray]:
        """``ids`` [N] and ``tp``/``fp``/``fn`` int64 [N, C] at grid threshold index ``j`` (or
        ``"native"``). Rows are sorted by image id, so the order images were seen in does not matter."""
        if j == "native":
            if self.native_rule is None:
                raise ValueError("this evaluator has no native rule")
            p = self.T
        else:
            p = int(j)
            if not 0 <= p < self.T:
                raise IndexError(f"threshold index {j} outside 0..{self.T - 1}")
        N, C = len(self._store), self.num_classes
        tp = np.zeros((N, C), dtype=np.int64)
        fp = np.zeros_like(tp)
        fn = np.zeros_like(tp)
        order = sorted(range(N), key=lambda i: self.image_ids[i])
        for i, src in enumerate(order):
            inv, counts = self._store[src]
            inv = inv.astype(np.int64)
            tp[i, inv] = counts[:, p, 0]
            fp[i, inv] = counts[:, p, 1]
            fn[i, inv] = counts[:, p, 2]
        ids = np.asarray([self.image_ids[i] for i in order], dtype=str)
        return {"ids": ids, "tp": tp, "fp": fp, "fn": fn}


def _f(v: float) -> float | None:
    return None if not math.isfinite(float(v)) else float(v)


def _argmax(curve: np.ndarray) -> int:
    """First index of the maximum, NaN treated as -inf (the lowest best threshold wins ties)."""
    c = np.where(np.isfinite(curve), curve, -np.inf)
    return int(np.argmax(c))
