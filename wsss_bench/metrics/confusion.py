"""Streaming confusion-matrix evaluation of hard masks (final segmentation, saved pseudo labels).

State: a ``(C + 1) x (C + 1)`` int64 count matrix, rows the ground truth, columns the prediction;
the extra row counts ignored ground-truth pixels, the extra column predictions of "no label"
(255, accepted only when asked for, see ``unlabelled``). Evaluators merge by summation (workers,
ranks: one all-reduce). Per-image TP/FP/FN of the classes involved are kept for paired bootstrap.
On CPU the work is numpy (no torch import); on a CUDA device it is torch, with the state there.

``unlabelled`` (what a 255 in a prediction means; by default it is an error):

- ``"fn"``: a pixel the prediction leaves unlabelled is neither a TP nor an FP of any class; it
  stays a false negative of its ground-truth class (the label had to say something there).
- ``"exclude"``: the pixel is not counted at all, as MoRe's ``pseudo_scores`` does (quality of
  the labelled part only).

Either way the metrics report ``coverage``: the labelled fraction of the counted pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import metrics_from_counts
from wsss_bench.metrics.rules import PerImageStore, Workspace

IGNORE_INDEX = 255
UNLABELLED_MODES = ("fn", "exclude")


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


def _as_uint8(x: Any, what: str, name: str | None) -> np.ndarray:
    a = x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)
    if a.dtype == np.uint8:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise WsssBenchError(f"{what} must be integer class indices, got dtype {a.dtype}", name)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 255):
        v = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise WsssBenchError(f"{what} value {v} is outside 0..255", name)
    return a.astype(np.uint8)


def confusion_matrix(pred: Any, gt: Any, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     name: str | None = None) -> np.ndarray:
    """C x C int64 confusion of one prediction (rows: ground truth, columns: prediction), numpy.

    Values of ``pred`` outside 0..C-1 or of ``gt`` outside 0..C-1 and ``ignore_index`` raise a
    :class:`WsssBenchError` naming the value (and ``name``, the file, when given).
    """
    ev = ConfusionEvaluator(num_classes, ignore_index=ignore_index, keep_per_image=False)
    ev.update(pred, gt, name=name)
    return ev.confusion


class ConfusionEvaluator:
    """Accumulates the confusion matrix of hard masks, image by image, on CPU or GPU.

    >>> import numpy as np
    >>> ev = ConfusionEvaluator(3)
    >>> ev.update(np.array([[0, 1, 2]]), np.array([[0, 1, 1]], np.uint8), image_id="a")
    >>> ev.metrics()["iou"]
    [1.0, 0.5, 0.0]
    """

    def __init__(self, num_classes: int, device: Any = "cpu", ignore_index: int = IGNORE_INDEX,
                 keep_per_image: bool = True, unlabelled: str | None = None, backend: str = "auto"):
        C = int(num_classes)
        if not 2 <= C <= 255:
            raise WsssBenchError(f"the number of classes must be in 2..255 (background included), got {C}")
        if not C <= int(ignore_index) <= 255:
            raise WsssBenchError(f"the ignore index must be in {C}..255, got {ignore_index}")
        if unlabelled is not None and unlabelled not in UNLABELLED_MODES:
            raise WsssBenchError(f"unlabelled must be one of {', '.join(UNLABELLED_MODES)}, got {unlabelled!r}")
        self.num_classes = C
        self.ignore_index = int(ignore_index)
        self.unlabelled = unlabelled
        self.keep_per_image = keep_per_image
        dev = str(device) if device is not None else "cpu"
        if backend == "auto":
            backend = "numpy" if dev == "cpu" else "torch"
        if backend not in ("numpy", "torch") or (backend == "numpy" and dev != "cpu"):
            raise ValueError(f"backend {backend!r} cannot run on {dev}")
        self.backend = backend
        if backend == "numpy":
            self.device = "cpu"
            self._state: Any = np.zeros((C + 1, C + 1), dtype=np.int64)
        else:
            import torch

            self.device = torch.device(device)
            self._state = torch.zeros((C + 1, C + 1), dtype=torch.int64, device=self.device)
        self.image_ids: list[str] = []
        self._store = PerImageStore((3,), np.int64)  # per image: classes [n] int16, TP/FP/FN [n, 3]
        self._ws = Workspace()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable without the scratch buffers (sent back from worker processes)."""
        state = dict(self.__dict__)
        state["_ws"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ws = Workspace()

    def all_reduce(self, group: Any = None) -> None:
        """Sum the counts over the ranks of ``group`` (torch.distributed) and gather the per-image
        state, in place; every rank must call it. Imports torch."""
        from wsss_bench.metrics.sync import sync_evaluator_state

        sync_evaluator_state(self, ("image_ids", "_per_image"), group)

    # -- state --------------------------------------------------------------------------------

    @property
    def hist(self) -> Any:
        """The full ``(C+1) x (C+1)`` state as a torch tensor (on CPU a view sharing memory), for
        in-place reductions such as ``torch.distributed.all_reduce``. Imports torch."""
        if self.backend == "numpy":
            import torch

            return torch.from_numpy(self._state)
        return self._state

    def state(self) -> np.ndarray:
        """The full ``(C+1) x (C+1)`` counts (last row: ignored gt; last column: unlabelled)."""
        return self._state if self.backend == "numpy" else self._state.cpu().numpy()

    @property
    def confusion(self) -> np.ndarray:
        """C x C int64 confusion of the labelled, non-ignored pixels."""
        C = self.num_classes
        return self.state()[:C, :C].copy()

    @property
    def _per_image(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-image (classes [n] int16, TP/FP/FN [n, 3]) as a list (gathered over ranks by
        ``all_reduce``; assigning a list replaces them)."""
        return self._store.to_list()

    @_per_image.setter
    def _per_image(self, items: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._store = PerImageStore.from_list(items, (3,), np.int64)

    # -- accumulation ---------------------------------------------------------------------------

    def update(self, pred: Any, gt: Any, image_id: str | None = None, name: str | None = None,
               gt_hist: np.ndarray | None = None, pred_hist: np.ndarray | None = None) -> None:
        """Add one image: ``pred`` and ``gt`` integer [H, W] (numpy or torch). ``gt_hist`` and
        ``pred_hist``: their 256-bin histograms when the reader has them (saves a pass)."""
        if self.backend == "torch":
            local = self._local_torch(pred, gt, name)
            local_np = local.cpu().numpy() if self.keep_per_image else None
            self._state += local
        else:
            local = local_np = self._local_numpy(pred, gt, name, gt_hist, pred_hist)
            self._state += local
        self._record(local_np, image_id)

    def add_local(self, local: np.ndarray, image_id: str | None = None) -> None:
        """Add one image's ``(C+1) x (C+1)`` counts computed elsewhere (:meth:`local_counts`)."""
        local = np.asarray(local, dtype=np.int64)
        if self.backend == "numpy":
            self._state += local
        else:
            import torch

            self._state += torch.from_numpy(local).to(self.device)
        self._record(local, image_id)

    def local_counts(self, pred: Any, gt: Any, name: str | None = None, gt_hist: np.ndarray | None = None,
                     pred_hist: np.ndarray | None = None) -> np.ndarray:
        """One image's ``(C+1) x (C+1)`` counts (numpy), checked, without adding them."""
        return self._local_numpy(pred, gt, name, gt_hist, pred_hist)

    def _record(self, local: np.ndarray | None, image_id: str | None) -> None:
        if self.keep_per_image:
            self._store.append(*self._image_counts(local))
            self.image_ids.append(image_id if image_id is not None else str(len(self.image_ids)))

    def _check_values(self, gt_bad: int | None, pred_bad: int | None, name: str | None) -> None:
        C = self.num_classes
        if gt_bad is not None:
            raise WsssBenchError(f"ground-truth value {gt_bad} is outside the class set (0..{C - 1}, "
                                 f"{self.ignore_index} ignored)", name)
        if pred_bad is not None:
            extra = " (255 means no label only with unlabelled='fn' or 'exclude')" if pred_bad == 255 else ""
            raise WsssBenchError(f"predicted value {pred_bad} is outside the class set (0..{C - 1}){extra}", name)

    def _bad_values(self, hist: np.ndarray, allowed: int | None) -> int | None:
        bad = np.nonzero(hist[self.num_classes:])[0] + self.num_classes
        if allowed is not None:
            bad = bad[bad != allowed]
        return int(bad[0]) if bad.size else None

    def _local_numpy(self, pred: Any, gt: Any, name: str | None, gt_hist: np.ndarray | None,
                     pred_hist: np.ndarray | None) -> np.ndarray:
        C = self.num_classes
        p = _as_uint8(pred, "prediction", name)
        g = _as_uint8(gt, "ground-truth", name)
        if p.shape != g.shape:
            raise WsssBenchError(f"prediction shape {tuple(p.shape)} differs from ground truth {tuple(g.shape)}", name)
        allowed_pred = 255 if self.unlabelled else None
        if gt_hist is not None:
            gt_bad = self._bad_values(np.asarray(gt_hist), self.ignore_index)
        else:
            gt_bad = self._scan_bad(g, self.ignore_index)
        if pred_hist is not None:
            pred_bad = self._bad_values(np.asarray(pred_hist), allowed_pred)
        else:
            pred_bad = self._scan_bad(p, allowed_pred)
        self._check_values(gt_bad, pred_bad, name)
        n = g.size
        ws = self._ws
        idx = ws.get("idx", n, np.int32)
        g, p = g.reshape(-1), p.reshape(-1)
        if C <= 127 and self.ignore_index == 255:
            # rows/columns by a bitwise and: 255 (ignored gt, unlabelled prediction) -> 127
            np.copyto(idx, np.bitwise_and(g, np.uint8(127), out=ws.get("a", n, np.uint8)), casting="unsafe")
            idx <<= 7
            idx += np.bitwise_and(p, np.uint8(127), out=ws.get("b", n, np.uint8))
            h = np.bincount(idx, minlength=128 * 128).reshape(128, 128)
            sel = np.append(np.arange(C), 127)
            return h[np.ix_(sel, sel)]
        np.copyto(idx, g, casting="unsafe")
        np.minimum(idx, np.int32(C), out=idx)  # the ignore index -> row C
        idx *= np.int32(C + 1)
        idx += np.minimum(p, np.uint8(C))  # 255 (no label) -> column C
        return np.bincount(idx, minlength=(C + 1) ** 2).reshape(C + 1, C + 1)

    def _scan_bad(self, a: np.ndarray, allowed: int | None) -> int | None:
        """A value >= C other than ``allowed`` in ``a``, found without a histogram when there is none."""
        C = self.num_classes
        if not a.size or int(a.max()) < C:
            return None
        if allowed is not None and np.count_nonzero(a >= C) == np.count_nonzero(a == allowed):
            return None
        return self._bad_values(np.bincount(a.reshape(-1), minlength=256), allowed)

    def _local_torch(self, pred: Any, gt: Any, name: str | None) -> Any:
        import torch

        C, dev = self.num_classes, self.device
        p = (pred if _is_torch(pred) else torch.from_numpy(np.ascontiguousarray(pred))).to(dev)
        g = (gt if _is_torch(gt) else torch.from_numpy(np.ascontiguousarray(gt))).to(dev)
        if p.shape != g.shape:
            raise WsssBenchError(f"prediction shape {tuple(p.shape)} differs from ground truth {tuple(g.shape)}", name)
        for t, what in ((p, "prediction"), (g, "ground-truth")):
            if t.is_floating_point():
                raise WsssBenchError(f"{what} must be integer class indices, got dtype {t.dtype}", name)
        p, g = p.long().reshape(-1), g.long().reshape(-1)
        gt_bad = pred_bad = None
        if g.numel():
            bad = g[(g < 0) | ((g >= C) & (g != self.ignore_index))]
            gt_bad = int(bad[0]) if bad.numel() else None
            badp = p[(p < 0) | ((p >= C) & ~((p == 255) & (self.unlabelled is not None)))]
            pred_bad = int(badp[0]) if badp.numel() else None
        self._check_values(gt_bad, pred_bad, name)
        idx = g.clamp(max=C) * (C + 1) + p.clamp(max=C)
        return torch.bincount(idx, minlength=(C + 1) ** 2).reshape(C + 1, C + 1)

    def _counts(self, full: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(TP, FP, FN) [..., C] of full ``[..., C+1, C+1]`` counts under the unlabelled mode."""
        C = self.num_classes
        valid = full[..., :C, :]  # rows with a ground-truth class
        tp = np.diagonal(valid[..., :C, :C], axis1=-2, axis2=-1).copy()
        fp = valid[..., :C].sum(axis=-2) - tp
        cols = C + 1 if self.unlabelled == "fn" else C
        fn = valid[..., :cols].sum(axis=-1) - tp
        return tp, fp, fn

    def _image_counts(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tp, fp, fn = self._counts(local)
        involved = np.nonzero((tp + fp + fn) > 0)[0]
        return involved.astype(np.int16), np.stack([tp[involved], fp[involved], fn[involved]], axis=-1)

    def merge(self, other: ConfusionEvaluator) -> ConfusionEvaluator:
        """Add another evaluator's state (another worker or rank) into this one."""
        if (other.num_classes, other.unlabelled) != (self.num_classes, self.unlabelled):
            raise ValueError("cannot merge evaluators with different class counts or unlabelled modes")
        if self.backend == "numpy":
            self._state += other.state()
        else:
            import torch

            self._state += torch.as_tensor(other.state()).to(self.device)
        self.image_ids += other.image_ids
        self._store.extend(other._store)
        return self

    # -- results -------------------------------------------------------------------------------

    def per_image_counts(self) -> dict[str, np.ndarray]:
        """``ids`` [N] and ``tp``/``fp``/``fn`` int64 [N, C], rows sorted by image id."""
        N, C = len(self._store), self.num_classes
        arr = np.zeros((N, 3, C), dtype=np.int64)
        order = sorted(range(N), key=lambda i: self.image_ids[i])
        for i, src in enumerate(order):
            inv, counts = self._store[src]
            arr[i][:, inv.astype(np.int64)] = counts.T
        ids = np.asarray([self.image_ids[i] for i in order], dtype=str)
        return {"ids": ids, "tp": arr[:, 0], "fp": arr[:, 1], "fn": arr[:, 2]}

    def metrics(self) -> dict[str, Any]:
        """Protocol metrics; with ``unlabelled`` set also ``coverage`` and ``unlabelled``."""
        full = self.state()
        out = metrics_from_counts(*self._counts(full))
        if self.unlabelled is not None:
            C = self.num_classes
            counted = int(full[:C, :].sum())
            unl = int(full[:C, C].sum())
            out["coverage"] = (counted - unl) / counted if counted else None
            out["unlabelled"] = self.unlabelled
            out["unlabelled_pixels"] = unl
        return out
