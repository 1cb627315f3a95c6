"""The Python API: score folders, read run records, and evaluate inside a training loop.

Every name here is also exported from the package (``from wsss_bench import SegEvaluator``), lazily:
``import wsss_bench`` imports neither torch nor pandas, and this module imports them only inside
the functions that need them. All metrics are fractions in [0, 1] (``None`` or NaN where a
quantity is undefined, e.g. the IoU of a class absent from both prediction and ground truth),
computed by the same engine as the command line (:mod:`wsss_bench.evaluate`,
:mod:`wsss_bench.metrics`), so a number from here equals the number in a run record.

Folders (what ``wsss-bench eval`` does):

- :func:`evaluate_predictions`: hard masks ``<id>.png`` -> :class:`EvalResult` (a ``segmentation``
  record, per-image counts, :meth:`EvalResult.per_class` as a DataFrame).
- :func:`evaluate_maps`: localisation maps (``.npy`` / ``.npz`` / class PNGs) -> the threshold
  sweep, the best, calibrated and native mIoU (a ``pseudo_label`` record).
- :func:`ground_truth`: the ground truth both score against: a dataset split, a folder of masks,
  or a folder restricted to a split's ids.

Records: :func:`load_records` reads record JSONs (files or folders) into a DataFrame, one row
per run, with the leaderboard's columns.

Streaming, in the style of torchmetrics: :class:`SegEvaluator` (``update(preds, target)`` per
batch, ``compute()``, ``reset()``; the confusion matrix is summed over ``torch.distributed`` ranks
when a process group is initialised) and :class:`PseudoLabelEvaluator` (maps and image labels per
batch -> mIoU at every threshold).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss_bench.errors import WsssBenchError

if TYPE_CHECKING:
    import pandas as pd

    from wsss_bench.evaluate import GroundTruth

__all__ = [
    "EvalResult", "PseudoLabelEvaluator", "SegEvaluator", "evaluate_maps", "evaluate_predictions",
    "ground_truth", "load_records",
]

PathLike = str | os.PathLike

#: Per-class metrics of a record, in the order :meth:`EvalResult.per_class` gives them.
PER_CLASS_METRICS = ("iou", "precision", "recall", "fp_ratio", "fn_ratio")


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------


def ground_truth(gt: PathLike | GroundTruth | None = None, *, dataset: str | None = None,
                 data_root: PathLike | None = None, split: str | None = None, classes: str = "voc",
                 ids: Iterable[str] | PathLike | None = None, **dataset_options: Any) -> GroundTruth:
    """Where the ground truth of a split lives (a :class:`wsss_bench.evaluate.GroundTruth`).

    - ``dataset`` (``voc``, ``coco``, ``synthetic``) with ``data_root`` and ``split`` (default
      ``train``): the split's masks, as ``wsss-bench run`` reads them; ``dataset_options`` as
      :func:`wsss_bench.data.build_dataset` takes them. With ``gt`` as well: the split's ids, their
      masks read from the folder ``gt``.
    - ``gt`` alone: every ``<id>.png`` of the folder, in the label space ``classes`` (``voc``,
      ``coco``, ``synthetic`` or a class count, background included); ``ids`` (a list of ids or a
      split file such as VOC's ``ImageSets/Segmentation/val.txt``) keeps only those. ``split`` names
      the record's split (default: the id file's stem, else the folder's name).

    A ``GroundTruth`` given as ``gt`` is returned as it is.
    """
    from wsss_bench.evaluate import GroundTruth

    if isinstance(gt, GroundTruth):
        return gt
    if dataset is not None:
        if data_root is None:
            raise WsssBenchError("a dataset needs its data_root")
        if ids is not None:
            raise WsssBenchError("give the split's ids as ids or as dataset/split, not both")
        from wsss_bench.data import build_dataset

        ds = build_dataset(dataset, data_root, split or "train", **dataset_options)
        return GroundTruth.from_dataset(ds, gt)
    if gt is None:
        raise WsssBenchError("give the ground truth: a folder of masks (gt) or a dataset with its data_root")
    if dataset_options:
        raise WsssBenchError(f"dataset options ({', '.join(sorted(dataset_options))}) need a dataset")
    from wsss_bench.data.classes import get_classset

    cs = get_classset(str(classes))
    if ids is None:
        return GroundTruth.from_folder(gt, cs, split)
    if isinstance(ids, (str, os.PathLike)):
        from wsss_bench.data.layout import read_id_list

        p = Path(ids)
        if not p.is_file():
            raise WsssBenchError("id list file not found", p)
        return GroundTruth.from_folder(gt, cs, split or p.stem, read_id_list(p))
    return GroundTruth.from_folder(gt, cs, split, [str(i) for i in ids])


@dataclass
class EvalResult:
    """What an evaluation of a folder gives: the run record and its per-image counts.

    ``record`` is the JSON record ``wsss-bench eval`` writes (fractions); ``counts`` holds ``ids``
    [N] and ``tp``/``fp``/``fn`` int64 [N, C] (for pseudo labels at the best threshold), what
    ``wsss-bench compare`` bootstraps over; ``path`` is the record file once saved.
    """

    record: dict[str, Any]
    counts: dict[str, np.ndarray]
    path: Path | None = field(default=None)

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def metrics(self) -> dict[str, Any]:
        """The record's ``metrics`` (for pseudo labels: at the best threshold)."""
        return self.record["metrics"]

    @property
    def miou(self) -> float | None:
        """mIoU over the classes with TP + FP + FN > 0 (pseudo labels: at the best threshold)."""
        return self.metrics["miou"]

    def per_class(self) -> pd.DataFrame:
        """Classes x (iou, precision, recall, fp_ratio, fn_ratio), fractions, NaN where undefined;
        the index is the class name."""
        import pandas as pd

        m = self.metrics
        data = {k: [np.nan if v is None else float(v) for v in m[k]] for k in PER_CLASS_METRICS}
        return pd.DataFrame(data, index=pd.Index(self.classes, name="class"))

    def sweep(self) -> pd.DataFrame:
        """The mIoU at every threshold (columns ``threshold``, ``miou``); pseudo-label records only."""
        import pandas as pd

        sw = self.record.get("sweep")
        if not sw:
            raise WsssBenchError("this record has no threshold sweep (it scores hard masks)")
        return pd.DataFrame({"threshold": sw["thresholds"],
                             "miou": [np.nan if v is None else v for v in sw["miou"]]})

    def to_frame(self) -> pd.DataFrame:
        """One row with the columns of :func:`load_records`."""
        return records_frame([self.record])

    def save(self, out_dir: PathLike) -> Path:
        """Write the record and its counts into ``out_dir`` (atomically); returns the record's path."""
        from wsss_bench.records import write_record

        self.path = Path(write_record(out_dir, self.record, self.counts))
        return self.path


def evaluate_predictions(pred_dir: PathLike, gt: PathLike | GroundTruth | None = None, *,
                         dataset: str | None = None, data_root: PathLike | None = None,
                         split: str | None = None, classes: str = "voc",
                         ids: Iterable[str] | PathLike | None = None, unlabelled: str | None = None,
                         name: str | None = None, out: PathLike | None = None,
                         workers: int | None = None) -> EvalResult:
    """Score a folder of hard masks (one ``<id>.png`` of class indices per image, palette or grey).

    The ground truth is given as :func:`ground_truth` takes it (``gt``, ``dataset``, ``data_root``,
    ``split``, ``classes``, ``ids``); every image of it needs a prediction. ``unlabelled="fn"`` or
    ``"exclude"`` accepts 255 in a prediction as "no label" (the metrics then give ``coverage``).
    ``out``: also write the record there. ``workers``: reader processes (default one per core;
    0 reads here). Bad input is a :class:`WsssBenchError` naming the file.

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from wsss_bench import evaluate_predictions
    >>> d = Path(tempfile.mkdtemp())
    >>> for sub, mask in (("gt", [[0, 1, 1, 255]]), ("pred", [[0, 1, 0, 0]])):
    ...     (d / sub).mkdir()
    ...     Image.fromarray(np.array(mask, np.uint8)).save(d / sub / "img1.png")
    >>> res = evaluate_predictions(d / "pred", d / "gt", classes="2", workers=0)
    >>> res.per_class()["iou"].round(3).tolist()
    [0.5, 0.5]
    >>> res.miou
    0.5
    """
    from wsss_bench.evaluate import eval_predictions

    truth = ground_truth(gt, dataset=dataset, data_root=data_root, split=split, classes=classes, ids=ids)
    record, counts = eval_predictions(pred_dir, truth, workers=workers, unlabelled=unlabelled, name=name)
    res = EvalResult(record, counts)
    if out is not None:
        res.save(out)
    return res


def evaluate_maps(map_dir: PathLike, gt: PathLike | GroundTruth | None = None, *,
                  dataset: str | None = None, data_root: PathLike | None = None, split: str | None = None,
                  classes: str = "voc", ids: Iterable[str] | PathLike | None = None,
                  native: Any = None, num_thresholds: int = 100, labels: str = "gt",
                  official: str | None = None, normalize: str | None = None, name: str | None = None,
                  out: PathLike | None = None, workers: int | None = None) -> EvalResult:
    """Score a folder of localisation maps with the protocol's threshold sweep.

    Maps as ``wsss-bench eval --cams`` reads them: IRN-style ``<id>.npy`` dicts (``keys`` and
    ``high_res`` or ``cam``), EDAM-style ``{class: map}`` ``.npy``, ``<id>.npz`` (``classes``,
    ``scores``) or greyscale class PNGs ``<id>_<c>.png``; values in [0, 1] unless ``normalize``
    (``max`` or ``minmax``) rescales each map. ``native``: the method's own rule (``0.15``,
    ``"constant:0.15"``, ``"power:32"``), evaluated exactly; ``labels``: each image's label set
    from the ground-truth mask (``gt``, what papers do) or from the map file (``maps``);
    ``official``: ``irn``, ``edam`` or ``toco`` adds the number that script prints. The record
    holds ``sweep``, ``best_threshold``, ``metrics`` (at the best threshold), ``calibrated`` and
    ``native``; :meth:`EvalResult.sweep` gives the curve as a DataFrame.

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from wsss_bench import evaluate_maps
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "gt").mkdir(); (d / "maps").mkdir()
    >>> Image.fromarray(np.array([[0, 0, 1, 1]], np.uint8)).save(d / "gt" / "img1.png")
    >>> np.savez(d / "maps" / "img1.npz", classes=np.array([1]),
    ...          scores=np.array([[[0.1, 0.3, 0.6, 0.9]]], np.float32))
    >>> res = evaluate_maps(d / "maps", d / "gt", classes="2", native=0.5, workers=0)
    >>> res.record["best_threshold"], res.miou, res.record["native"]["miou"]
    (0.3, 1.0, 1.0)
    >>> curve = res.sweep().set_index("threshold")["miou"]  # at 0.1 the 0.3 pixel is wrongly foreground
    >>> [round(float(curve[t]), 4) for t in (0.1, 0.3, 0.6)]
    [0.5833, 1.0, 0.5833]
    """
    from wsss_bench.evaluate import eval_cams

    truth = ground_truth(gt, dataset=dataset, data_root=data_root, split=split, classes=classes, ids=ids)
    record, counts = eval_cams(map_dir, truth, workers=workers, num_thresholds=num_thresholds,
                               label_source=labels, native=native, official=official, normalize=normalize,
                               name=name)
    res = EvalResult(record, counts)
    if out is not None:
        res.save(out)
    return res


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

#: Identification columns :func:`load_records` puts first.
RECORD_FIELDS = ("name", "kind", "dataset", "split", "num_images", "protocol_version", "fingerprint")


def records_frame(records: Sequence[dict[str, Any]], per_class: bool = False) -> pd.DataFrame:
    """Records already read (dicts) -> the DataFrame of :func:`load_records`."""
    import pandas as pd

    from wsss_bench.reports.table import record_row

    rows = []
    for rec in records:
        row: dict[str, Any] = {k: rec.get(k) for k in RECORD_FIELDS}
        row.update(record_row(rec))
        row["path"] = rec.get("_path")
        if per_class:
            iou = (rec.get("metrics") or {}).get("iou") or []
            for cname, v in zip(rec.get("classes") or [], iou, strict=False):
                row[f"iou/{cname}"] = np.nan if v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows)


def load_records(paths: PathLike | Iterable[PathLike], per_class: bool = False) -> pd.DataFrame:
    """Run records (files, or folders searched recursively) as a DataFrame, one row per record.

    Columns: :data:`RECORD_FIELDS`, then the leaderboard's row (``method``, ``settings``, ``label``,
    ``miou_best``, ``best_threshold``, ``miou_calibrated``, ``miou_native``, mean precision / recall
    / FP and FN ratios over the valid classes, ``pixel_accuracy``, ``fw_iou``, timings, ...; all
    fractions; for hard masks ``miou_best`` is the mIoU), and ``path``. ``per_class=True`` adds one
    ``iou/<class>`` column per class. In a folder, JSON files that are not records are ignored and
    malformed records are skipped with a warning naming them; a file named explicitly must be a
    record (else a :class:`WsssBenchError`).

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from wsss_bench import evaluate_predictions, load_records
    >>> d = Path(tempfile.mkdtemp())
    >>> for sub, mask in (("gt", [[0, 1, 1]]), ("a", [[0, 1, 1]]), ("b", [[0, 0, 1]])):
    ...     (d / sub).mkdir()
    ...     Image.fromarray(np.array(mask, np.uint8)).save(d / sub / "x.png")
    >>> for sub in "ab":
    ...     _ = evaluate_predictions(d / sub, d / "gt", classes="2", workers=0, out=d / "records")
    >>> df = load_records(d / "records")
    >>> df = df.sort_values("name")
    >>> list(zip(df["name"], df["kind"], df["miou_best"]))
    [('eval-a', 'segmentation', 1.0), ('eval-b', 'segmentation', 0.5)]
    """
    from wsss_bench.reports.table import collect

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return records_frame(collect(items).records, per_class=per_class)


# ----------------------------------------------------------------------------------------------
# Streaming evaluators
# ----------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


def _world(process_group: Any) -> int:
    """The number of ranks to sum over (1 when torch.distributed is not initialised). Imports torch
    only when it is already imported (a process group needs it)."""
    import sys

    if "torch" not in sys.modules:
        return 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _device_of(x: Any, device: Any) -> Any:
    if device is not None:
        return device
    return x.device if _is_torch(x) else "cpu"


class SegEvaluator:
    """Streaming mIoU of hard predictions (or logits) against integer targets, batch by batch.

    ``SegEvaluator(num_classes, ignore_index=255, device=None)``: ``num_classes`` counts the
    background (VOC 21); target pixels equal to ``ignore_index`` (in ``num_classes..255``) are not
    counted. ``device``: where the confusion matrix lives (``None``: the device of the first batch;
    on a GPU the counting runs there). ``update(preds, target)`` takes torch tensors or numpy arrays:
    ``target`` integer [B, H, W] (or [H, W]); ``preds`` integer of the same shape, or scores
    [B, C, H, W] (logits, probabilities) of which the argmax over dim 1 is taken. ``compute()``
    returns the protocol's metrics (:func:`wsss_bench.metrics.functional.metrics_from_counts`):
    ``miou``, ``iou`` (a list in class order, ``None`` where a class never occurs), ``precision``,
    ``recall``, ``fp_ratio``, ``fn_ratio``, ``pixel_accuracy``, ``fw_iou``, ``num_valid_classes``,
    ``num_pixels``, and ``classes`` when ``class_names`` are given. The mIoU averages the classes with
    TP + FP + FN > 0, counted over every pixel seen (not averaged per image).

    Under ``torch.distributed`` (a process group initialised, ``sync_on_compute=True``) ``compute``
    sums the confusion matrices of all ranks with one ``all_reduce`` (every rank must call it) and
    leaves each rank's own counts unchanged, so ``update`` can go on. Built on
    :class:`wsss_bench.metrics.confusion.ConfusionEvaluator`; values outside the classes are a
    :class:`WsssBenchError`.

    >>> import torch
    >>> from wsss_bench import SegEvaluator
    >>> ev = SegEvaluator(3)
    >>> ev.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
    >>> out = ev.compute()
    >>> out["iou"], out["miou"], round(out["pixel_accuracy"], 3)
    ([1.0, 0.5, 0.0], 0.5, 0.667)
    >>> logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 5.0]], [[0.0, 0.0]]]])  # [B=1, C=3, H=1, W=2]
    >>> ev.reset(); ev.update(logits, torch.tensor([[[0, 255]]])); ev.compute()["iou"]
    [1.0, None, None]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: Any = None,
                 class_names: Sequence[str] | None = None, unlabelled: str | None = None,
                 sync_on_compute: bool = True, process_group: Any = None):
        from wsss_bench.metrics.confusion import ConfusionEvaluator

        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.unlabelled = unlabelled
        if class_names is not None and len(class_names) != self.num_classes:
            raise WsssBenchError(f"{len(class_names)} class names for {self.num_classes} classes")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.device = device
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        # checks num_classes, ignore_index and unlabelled now rather than at the first batch
        ConfusionEvaluator(self.num_classes, ignore_index=self.ignore_index, keep_per_image=False,
                           unlabelled=unlabelled)
        self._ev: Any = None

    def _new(self, device: Any) -> Any:
        from wsss_bench.metrics.confusion import ConfusionEvaluator

        return ConfusionEvaluator(self.num_classes, device=device, ignore_index=self.ignore_index,
                                  keep_per_image=False, unlabelled=self.unlabelled)

    def update(self, preds: Any, target: Any) -> None:
        """Add a batch: ``preds`` class indices shaped like ``target``, or scores with the classes on dim 1."""
        if self._ev is None:
            self._ev = self._new(_device_of(target, self.device))
        preds = self._hard(preds, target)
        self._ev.update(preds, target)

    def _hard(self, preds: Any, target: Any) -> Any:
        pshape, tshape = tuple(preds.shape), tuple(target.shape)
        if len(pshape) == len(tshape) + 1:
            if len(pshape) < 2 or pshape[1] != self.num_classes or pshape[:1] + pshape[2:] != tshape:
                raise WsssBenchError(f"scores of shape {pshape} do not match {self.num_classes} classes and "
                                     f"target shape {tshape} (expected [B, {self.num_classes}, H, W])")
            return preds.argmax(1)
        if pshape != tshape:
            raise WsssBenchError(f"prediction shape {pshape} differs from target shape {tshape}")
        return preds

    def reset(self) -> None:
        """Forget every batch seen."""
        self._ev = None

    def _state(self) -> np.ndarray:
        """The full ``(C + 1) x (C + 1)`` counts, summed over the ranks when synchronising."""
        C = self.num_classes
        ev = self._ev
        if not (self.sync_on_compute and _world(self.process_group) > 1):
            return ev.state().copy() if ev is not None else np.zeros((C + 1, C + 1), np.int64)
        import torch

        from wsss_bench.metrics.sync import all_reduce_sum

        t = ev.hist.clone() if ev is not None else torch.zeros((C + 1, C + 1), dtype=torch.int64)
        return all_reduce_sum(t, self.process_group).cpu().numpy()

    def confusion_matrix(self) -> np.ndarray:
        """C x C int64 counts (rows: target, columns: prediction), synchronised like :meth:`compute`."""
        C = self.num_classes
        return self._state()[:C, :C].copy()

    def compute(self) -> dict[str, Any]:
        """The metrics of every batch since the last :meth:`reset` (all ranks, when synchronising)."""
        ev = self._new("cpu")
        ev.add_local(self._state())
        out = ev.metrics()
        if self.class_names is not None:
            out["classes"] = list(self.class_names)
        return out


def _normalize_torch(s: Any, mode: str) -> Any:
    """:func:`wsss_bench.io.normalize_maps` for a torch [K, H, W] stack (on its device)."""
    import torch

    s = s.float()
    flat = s.reshape(s.shape[0], -1)
    if mode == "max":
        flat = flat.clamp_min(0)
        top = flat.amax(dim=1, keepdim=True) if flat.shape[1] else torch.zeros(flat.shape[0], 1)
        flat = torch.where(top > 0, flat / torch.where(top > 0, top, torch.ones_like(top)), flat)
    elif mode == "minmax":
        lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
        span = hi - lo
        flat = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(flat))
    else:
        from wsss_bench.io import NORMALIZE_MODES

        raise WsssBenchError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
    return flat.reshape(s.shape)


def _normalize(s: Any, mode: str | None) -> Any:
    if mode is None:
        return s
    if _is_torch(s):
        return _normalize_torch(s, mode)
    from wsss_bench.io import normalize_maps

    return normalize_maps(np.asarray(s, dtype=np.float32), mode)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


class PseudoLabelEvaluator:
    """Pseudo-label quality at every threshold, from maps and image labels, batch by batch.

    ``PseudoLabelEvaluator(num_classes, num_thresholds=100, native=None)``: ``num_classes`` counts
    the background (VOC 21). ``update(maps, labels, target, image_ids=None)``: ``maps`` float
    [B, C - 1, H, W], one map per *foreground* class (a CAM head's output, upsampled to the target
    size); ``labels`` the image-level labels, multi-hot [B, C - 1] (``None``: the classes present in
    each target, as papers evaluate); ``target`` integer [B, H, W], 255 ignored. Only the maps of an
    image's classes are used. Maps must lie in [0, 1] (values outside are clamped) unless
    ``normalize`` (``max``: negatives to 0, then divided by the map's maximum; ``minmax``) rescales
    each map. At threshold t_j = j / T a pixel is its top class where the top score exceeds t_j,
    background elsewhere (the protocol's rule, exact for all T thresholds from one histogram).

    ``compute()`` gives what a ``pseudo_label`` record holds: ``sweep`` {thresholds, miou},
    ``best_threshold``, ``best_miou``, ``metrics`` (at the best threshold), ``calibrated`` (the
    threshold chosen on the calibration subset, the mIoU on the other images; the subset is chosen
    by image id, so pass ``image_ids`` for the protocol's subset) and, with ``native`` (the
    method's rule, e.g. ``0.15`` or ``"power:32"``), ``native``. Under ``torch.distributed`` the
    counts of all ranks are summed as in :class:`SegEvaluator`. Built on
    :class:`wsss_bench.metrics.sweep.SweepEvaluator`.

    >>> import torch
    >>> from wsss_bench import PseudoLabelEvaluator
    >>> ev = PseudoLabelEvaluator(3, num_thresholds=10, native=0.5)
    >>> maps = torch.tensor([[[[0.2, 0.7, 0.9]], [[0.0, 0.1, 0.95]]]])  # [B=1, 2 classes, 1, 3]
    >>> ev.update(maps, torch.tensor([[1, 1]]), torch.tensor([[[0, 1, 2]]]))
    >>> out = ev.compute()
    >>> out["best_threshold"], out["best_miou"], out["native"]["miou"]
    (0.2, 1.0, 1.0)
    >>> [round(v, 3) for v in out["sweep"]["miou"][:3]]
    [0.5, 0.5, 1.0]
    """

    def __init__(self, num_classes: int, num_thresholds: int = 100, native: Any = None,
                 ignore_index: int = 255, device: Any = None, normalize: str | None = None,
                 class_names: Sequence[str] | None = None, sync_on_compute: bool = True,
                 process_group: Any = None):
        from wsss_bench.io import NORMALIZE_MODES
        from wsss_bench.metrics.sweep import SweepEvaluator

        if normalize is not None and normalize not in NORMALIZE_MODES:
            raise WsssBenchError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        self.num_classes = int(num_classes)
        self.num_thresholds = int(num_thresholds)
        self.native = native
        self.ignore_index = int(ignore_index)
        self.device = device
        self.normalize = normalize
        if class_names is not None and len(class_names) != self.num_classes:
            raise WsssBenchError(f"{len(class_names)} class names for {self.num_classes} classes")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        # checks the class count, thresholds, ignore index and rule now rather than at the first batch
        SweepEvaluator(self.num_classes, self.num_thresholds, ignore_index=self.ignore_index,
                       keep_per_image=False, native_rule=native)
        self._ev: Any = None

    def _new(self, device: Any) -> Any:
        from wsss_bench.metrics.sweep import SweepEvaluator

        return SweepEvaluator(self.num_classes, self.num_thresholds, device=device, ignore_index=self.ignore_index,
                              keep_per_image=False, native_rule=self.native)

    def update(self, maps: Any, labels: Any, target: Any, image_ids: Sequence[str] | None = None) -> None:
        """Add a batch (or one image: maps [C - 1, H, W], labels [C - 1], target [H, W])."""
        F = self.num_classes - 1
        if len(tuple(target.shape)) == 2:
            maps, target = maps[None], target[None]
            labels = None if labels is None else labels[None]
            if isinstance(image_ids, str):
                image_ids = [image_ids]
        mshape, tshape = tuple(maps.shape), tuple(target.shape)
        if len(mshape) != 4 or mshape[1] != F or (mshape[0],) + mshape[2:] != tshape:
            raise WsssBenchError(f"maps of shape {mshape} do not match {F} foreground classes and target shape "
                                 f"{tshape} (expected [B, {F}, H, W])")
        B = tshape[0]
        if labels is not None:
            lab = _to_numpy(labels)
            if lab.shape != (B, F):
                raise WsssBenchError(f"labels of shape {tuple(lab.shape)} do not match (B, C - 1) = ({B}, {F})")
            present = [np.nonzero(row)[0] for row in lab]
        else:
            present = None
        if image_ids is not None and len(image_ids) != B:
            raise WsssBenchError(f"{len(image_ids)} image ids for a batch of {B}")
        if self._ev is None:
            self._ev = self._new(_device_of(target, self.device))
        for b in range(B):
            g = target[b]
            if present is None:
                gv = _to_numpy(g)
                fg = np.unique(gv[(gv >= 1) & (gv < self.num_classes)]).astype(np.int64) - 1
            else:
                fg = present[b].astype(np.int64)
            scores = maps[b][fg.tolist()] if _is_torch(maps) else np.asarray(maps[b])[fg]
            scores = _normalize(scores, self.normalize)
            iid = None if image_ids is None else str(image_ids[b])
            self._ev.update(scores, fg + 1, g, image_id=iid)

    def reset(self) -> None:
        """Forget every image seen."""
        self._ev = None

    def _synced(self) -> Any:
        ev = self._ev if self._ev is not None else self._new("cpu")
        if not (self.sync_on_compute and _world(self.process_group) > 1):
            return ev
        ev = copy.deepcopy(ev)  # this rank's own counts stay as they are
        ev.all_reduce(self.process_group)
        return ev

    def compute(self) -> dict[str, Any]:
        """The sweep, best, calibrated and native results of every image since the last :meth:`reset`."""
        ev = self._synced()
        out = ev.results()
        out["best_miou"] = out["metrics"]["miou"]
        out["num_images"] = len(ev.image_ids)
        if self.class_names is not None:
            out["classes"] = list(self.class_names)
        return out
