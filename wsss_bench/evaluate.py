"""Scoring folders of predictions or localisation maps without any method adapter.

This is what ``wsss-bench eval`` calls: users evaluate what any official code base produced
(PNG masks; IRN-style ``.npy`` CAM dicts, tensors included; EDAM's ``{class: map}`` dicts; our
``.npz`` maps; or class PNGs ``<id>_<c>.png``) under the protocol, and optionally get the number
the method's own evaluation script would print (:mod:`wsss_bench.metrics.official`).

Speed: each worker process reads an image's files and reduces them to a few kilobytes of counts
right where they were read (maps never travel between processes); the main process only adds
counts up. Workers default to the cores this process may run on. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import (
    MAP_SUFFIXES,
    NORMALIZE_MODES,
    decode_index_png,
    index_map_pngs,
    load_cam_file,
    load_cam_pngs,
)
from wsss_bench.metrics.confusion import UNLABELLED_MODES, ConfusionEvaluator
from wsss_bench.metrics.official import DEFAULT_RULES, LABEL_SETS, SCRIPTS, official_entry
from wsss_bench.metrics.rules import NativeRule, check_num_thresholds
from wsss_bench.metrics.sweep import SweepEvaluator

Progress = Callable[[int, int], None]
LABEL_SOURCES = ("gt", "maps")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; cgroup quotas are not seen)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def busy_cores(samples: int = 5) -> float:
    """How many of this process's cores other work keeps busy now: the smaller of the 1-minute load
    average and the median, over a few samples 1 ms apart, of the tasks running at that instant
    (``/proc/loadavg``, this process not counted), scaled to the share of the machine's CPUs this
    process may use. Both must agree: the load average lags by a minute (the commands run just
    before would count as busy), and a single instant catches short-lived tasks. 0 where neither
    can be read."""
    import statistics
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(max(0, int(f.read().split()[3].split("/")[0]) - 1))
        except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
            return 0.0
        if i + 1 < samples:
            time.sleep(0.001)
    try:
        load = min(os.getloadavg()[0], statistics.median(counts))
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        load = statistics.median(counts)
    total = os.cpu_count() or 1
    return load * available_cores() / max(total, available_cores())


def default_workers(num_images: int, busy: float | None = None) -> int:
    """The fastest choice measured (benchmarks/bench_sweep.py): one reader process per idle core,
    the main process only adding counts; in-process (0) when fewer than two cores are idle (reader
    processes then only compete with each other and with the machine's other work: on a busy
    machine they cost CPU time and win nothing), or for a handful of images. Never more reader
    processes than available cores. ``busy``: busy cores (default :func:`busy_cores`)."""
    cores = available_cores()
    if cores == 1 or num_images < 16:
        return 0
    idle = cores - (busy_cores() if busy is None else busy)
    w = math.floor(idle + 0.75)  # a core three-quarters idle is worth a reader
    return min(cores, w) if w >= 2 else 0


@dataclass
class GroundTruth:
    """Where the ground truth of a split lives: ids -> mask paths, and the label space."""

    classes: Any  # wsss_bench.data.classes.ClassSet
    dataset: str
    split: str
    masks: dict[str, Path]

    @classmethod
    def from_folder(cls, gt_dir: str | os.PathLike, classes: Any, split: str | None = None,
                    ids: Iterable[str] | None = None, dataset: str | None = None) -> GroundTruth:
        """Masks ``<gt_dir>/<id>.png``: every mask in the folder, or only ``ids`` (a split's list;
        each must have its mask). ``split`` names the record's split (default: the folder name)."""
        d = Path(gt_dir)
        if not d.is_dir():
            raise WsssBenchError("ground-truth folder not found", d)
        if ids is None:
            masks = {p.stem: p for p in sorted(d.glob("*.png"))}
            if not masks:
                raise WsssBenchError("no .png masks in the ground-truth folder", d)
        else:
            masks = {}
            for image_id in ids:
                p = d / f"{image_id}.png"
                if not p.is_file():
                    raise WsssBenchError(f"no ground-truth mask for image {image_id!r} (expected {p.name})", d)
                masks[image_id] = p
            if not masks:
                raise WsssBenchError("the id list is empty", d)
        return cls(classes, dataset or classes.name, split or d.name, masks)

    @classmethod
    def from_dataset(cls, ds: Any, gt_dir: str | os.PathLike | None = None) -> GroundTruth:
        """The ground truth of dataset split ``ds``; with ``gt_dir``, its ids with masks from there."""
        if gt_dir is not None:
            return cls.from_folder(gt_dir, ds.classes, ds.split, ds.ids, dataset=ds.name)
        masks = {i: ds.mask_path(i) for i in ds.ids}
        if any(p is None for p in masks.values()):
            raise WsssBenchError(f"split {ds.split!r} has no ground truth to score against", ds.root)
        return cls(ds.classes, ds.name, ds.split, masks)

    def fingerprint(self) -> str:
        """Same value as :func:`wsss_bench.data.base.fingerprint_of` (ids and mask digests)."""
        return fingerprint_from_digests({i: _sha256(p) for i, p in self.masks.items()})


def _sha256(path: Path) -> str:
    from wsss_bench.io import sha256_file

    return sha256_file(path)


def fingerprint_from_digests(digests: dict[str, str]) -> str:
    """SHA-256 over sorted ``id<TAB>mask sha256`` lines: the run records' fingerprint."""
    h = hashlib.sha256()
    for image_id in sorted(digests):
        h.update(f"{image_id}\t{digests[image_id]}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Worker pool: items in, small results out, the first user error (in item order) re-raised
# ----------------------------------------------------------------------------------------------


class _Failure:
    __slots__ = ("message", "path")

    def __init__(self, message: str, path: str | None):
        self.message, self.path = message, path


_JOB: dict[str, Any] = {}


def _init_worker(job: Any) -> None:
    _JOB["job"] = job
    tune_malloc()


def _call(item: Any) -> Any:
    try:
        return _JOB["job"].run(item)
    except WsssBenchError as e:
        return _Failure(e.message, e.path)


def tune_malloc() -> None:
    """Keep freed buffers in the heap instead of returning them to the system: without this,
    glibc serves every array of more than 128 KiB with a fresh ``mmap`` whose pages fault on first
    touch, which costs more than decoding the files. For processes that only evaluate (worker
    processes, the ``wsss-bench eval`` command); a no-op where the C library is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def chunks(items: list[Any], workers: int) -> list[list[Any]]:
    """Consecutive chunks: about six per worker (load balance), at most 64 items each."""
    size = max(1, min(64, len(items) // (max(workers, 1) * 6)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_pool(job: Any, items: list[Any], workers: int) -> Iterator[Any]:
    """``job.run(chunk)`` for consecutive chunks of ``items``, in order, in ``workers`` processes
    (0: here). Each chunk's counts are added up where its files were read; only those sums travel
    back. The first user error, in item order, is raised."""
    parts = chunks(items, workers)
    if workers <= 0 or len(parts) <= 1:
        for part in parts:
            yield job.run(part)
        return
    # concurrent.futures rather than multiprocessing.Pool: on an error, Pool's context manager calls
    # terminate(), and a worker killed while it holds the result queue's lock leaves the pool's
    # handler thread waiting forever (seen as a hung test); here pending chunks are cancelled and
    # the workers stop normally (see wsss_bench.data.parallel)
    from concurrent.futures import ProcessPoolExecutor

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(min(workers, len(parts)), mp_context=ctx, initializer=_init_worker,
                               initargs=(job,))
    try:
        futures = [pool.submit(_call, part) for part in parts]
        for fut in futures:
            res = fut.result()
            if isinstance(res, _Failure):
                raise WsssBenchError(res.message, res.path)
            yield res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Hard masks
# ----------------------------------------------------------------------------------------------


def _listing(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except OSError as e:
        raise WsssBenchError(f"cannot list folder ({e.strerror})", folder) from None


def _match_files(pred_dir: Path, gt: GroundTruth, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not pred_dir.is_dir():
        raise WsssBenchError("prediction folder not found", pred_dir)
    names = _listing(pred_dir)
    files: dict[str, Path] = {}
    for image_id in gt.masks:
        for sfx in suffixes:
            if f"{image_id}{sfx}" in names:
                files[image_id] = pred_dir / f"{image_id}{sfx}"
                break
        else:
            raise WsssBenchError(f"missing prediction for image {image_id!r} "
                                 f"(expected {image_id}{' or '.join(suffixes)})", pred_dir)
    return files


def _read_gt(path: Path, histogram: bool = True) -> tuple[np.ndarray, np.ndarray | None, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WsssBenchError(f"cannot read file ({e.strerror})", path) from None
    g, hist = decode_index_png(raw, path, histogram=histogram, writable=False)
    return g, hist, hashlib.sha256(raw).hexdigest()


@dataclass
class _PredJob:
    gt: dict[str, Path]
    files: dict[str, Path]
    num_classes: int
    unlabelled: str | None
    ev: ConfusionEvaluator = field(init=False)

    def __post_init__(self) -> None:
        self.ev = ConfusionEvaluator(self.num_classes, unlabelled=self.unlabelled, keep_per_image=False)

    def run(self, ids: list[str]) -> tuple[ConfusionEvaluator, dict[str, str]]:
        ev = ConfusionEvaluator(self.num_classes, unlabelled=self.unlabelled)
        digests = {}
        for image_id in ids:
            g, _, digests[image_id] = _read_gt(self.gt[image_id], histogram=False)
            path = self.files[image_id]
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise WsssBenchError(f"cannot read file ({e.strerror})", path) from None
            p, _ = decode_index_png(raw, path, writable=False)
            if p.shape != g.shape:
                raise WsssBenchError(f"prediction size {p.shape[1]}x{p.shape[0]} differs from ground truth "
                                     f"{g.shape[1]}x{g.shape[0]}", path)
            ev.add_local(self.ev.local_counts(p, g, str(path)), image_id)
        return ev, digests


def eval_predictions(pred_dir: str | os.PathLike, gt: GroundTruth, workers: int | None = None,
                     progress: Progress | None = None, unlabelled: str | None = None,
                     name: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score one PNG per image (class-index values) -> a ``segmentation`` record and counts.

    ``unlabelled``: ``"fn"`` or ``"exclude"`` accepts 255 in a prediction as "no label" (see
    :mod:`wsss_bench.metrics.confusion`); the metrics then report ``coverage``."""
    from wsss_bench.records import new_record

    if unlabelled is not None and unlabelled not in UNLABELLED_MODES:
        raise WsssBenchError(f"unlabelled must be one of {', '.join(UNLABELLED_MODES)}, got {unlabelled!r}")
    pred_dir = Path(pred_dir)
    files = _match_files(pred_dir, gt, (".png",))
    ids = list(gt.masks)
    C = gt.classes.num_classes
    ev = ConfusionEvaluator(C, unlabelled=unlabelled)
    digests: dict[str, str] = {}
    job = _PredJob(gt.masks, files, C, unlabelled)
    w = default_workers(len(ids)) if workers is None else workers
    done = 0
    for part, part_digests in run_pool(job, ids, w):
        ev.merge(part)
        digests.update(part_digests)
        done += len(part_digests)
        if progress:
            progress(done, len(ids))
    extra = {} if unlabelled is None else {"unlabelled": unlabelled}
    record = new_record("segmentation", gt.dataset, gt.split, gt.classes.names, len(ids),
                        fingerprint_from_digests(digests), name=name or f"eval-{pred_dir.name}",
                        source=str(pred_dir), metrics=ev.metrics(), **extra)
    return record, ev.per_image_counts()


# ----------------------------------------------------------------------------------------------
# Localisation maps
# ----------------------------------------------------------------------------------------------


@dataclass
class _MapJob:
    gt: dict[str, Path]
    files: dict[str, Any]  # id -> Path (.npz/.npy) or {class: Path} (class PNGs)
    num_classes: int
    num_thresholds: int
    native: NativeRule | None
    label_source: str
    normalize: str | None
    official_rule: NativeRule | None  # a second, native-only count with the official script's label set
    official_labels: str | None
    ev: SweepEvaluator = field(init=False)
    official: SweepEvaluator | None = field(init=False)

    def __post_init__(self) -> None:
        self.ev = SweepEvaluator(self.num_classes, self.num_thresholds, native_rule=self.native)
        self.official = None if self.official_rule is None else SweepEvaluator(
            self.num_classes, 1, native_rule=self.official_rule, keep_per_image=False)

    def run(self, ids: list[str]) -> _MapChunk:
        out = _MapChunk(SweepEvaluator(self.num_classes, self.num_thresholds, native_rule=self.native),
                        None if self.official is None else SweepEvaluator(
                            self.num_classes, 1, native_rule=self.official_rule, keep_per_image=False))
        for image_id in ids:
            self.one(image_id, out)
        return out

    def one(self, image_id: str, out: _MapChunk) -> None:
        g, ghist, out.digests[image_id] = _read_gt(self.gt[image_id])
        src = self.files[image_id]
        if isinstance(src, dict):
            classes, scores = load_cam_pngs(src, self.normalize, unit_range=True)
            path = src[int(classes[0])] if len(classes) else next(iter(src.values()))
        else:
            path = src
            classes, scores = load_cam_file(path, self.normalize, unit_range=True)
        C = self.num_classes
        if scores.shape[1:] != g.shape:
            raise WsssBenchError(f"map size {scores.shape[2]}x{scores.shape[1]} differs from ground truth "
                                 f"{g.shape[1]}x{g.shape[0]}", path)
        bad = classes[(classes < 1) | (classes >= C)]
        if bad.size:
            raise WsssBenchError(f"map class {int(bad[0])} is outside the foreground classes 1..{C - 1}", path)
        if np.unique(classes).size != classes.size:
            raise WsssBenchError("a class is listed twice in the maps", path)
        index = {int(c): i for i, c in enumerate(classes)}
        labels, maps, missing = _label_maps(self.label_source, index, scores, ghist, C)
        out.ev.add(self.ev.image_result(maps, labels, g, image_id, str(path), gt_hist=ghist, checked=True))
        if out.official is not None:
            labels, maps, _ = _label_maps(self.official_labels, index, scores, ghist, C)
            out.official.add(self.official.image_result(maps, labels, g, image_id, str(path), gt_hist=ghist,
                                                        checked=True))
        out.missing += int(missing)
        out.dtypes.add(str(scores.dtype))


@dataclass
class _MapChunk:
    """What a worker sends back for a chunk of images: summed counts and a few statistics."""

    ev: SweepEvaluator
    official: SweepEvaluator | None
    digests: dict[str, str] = field(default_factory=dict)
    missing: int = 0
    dtypes: set[str] = field(default_factory=set)


def _label_maps(source: str, index: dict[int, int], scores: np.ndarray, ghist: np.ndarray,
                C: int) -> tuple[list[int], list[np.ndarray], bool]:
    """(label set, its maps, whether a class lacked a map): the classes of the gt mask (``gt``;
    a class without a map gets a zero map) or of the map file (``maps``)."""
    labels = [c for c in range(1, C) if ghist[c]] if source == "gt" else sorted(index)
    maps: list[np.ndarray] = []
    zeros = None
    for c in labels:
        if c in index:
            maps.append(scores[index[c]])
        else:
            zeros = np.zeros(scores.shape[1:], np.float32) if zeros is None else zeros
            maps.append(zeros)
    return labels, maps, any(c not in index for c in labels)


def _map_sources(cam_dir: Path, gt: GroundTruth) -> dict[str, Any]:
    if not cam_dir.is_dir():
        raise WsssBenchError("map folder not found", cam_dir)
    names = _listing(cam_dir)
    pngs: dict[str, dict[int, Path]] | None = None
    files: dict[str, Any] = {}
    for image_id in gt.masks:
        for sfx in MAP_SUFFIXES:
            if f"{image_id}{sfx}" in names:
                files[image_id] = cam_dir / f"{image_id}{sfx}"
                break
        else:
            if pngs is None:
                pngs = index_map_pngs(cam_dir)
            if image_id not in pngs:
                raise WsssBenchError(f"missing maps for image {image_id!r} (expected {image_id}.npz, {image_id}.npy "
                                     f"or class PNGs {image_id}_<class>.png)", cam_dir)
            files[image_id] = pngs[image_id]
    return files


def eval_cams(cam_dir: str | os.PathLike, gt: GroundTruth, workers: int | None = None, num_thresholds: int = 100,
              label_source: str = "gt", native_threshold: float | None = None,
              progress: Progress | None = None, native: Any = None, official: str | None = None,
              normalize: str | None = None, name: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score localisation maps with the threshold sweep -> a ``pseudo_label`` record and counts.

    ``label_source="gt"``: the image's label set is the classes of its ground-truth mask (what
    every paper does); ``"maps"``: the classes the map file lists (e.g. a classifier's predictions).
    Maps of classes outside the label set are not used; a class of the set without a map counts as
    a zero map (the record counts such images in ``images_missing_class_maps``).

    ``native`` (or ``native_threshold``, a constant): the method's own rule, evaluated exactly
    (:class:`~wsss_bench.metrics.rules.NativeRule`). ``official``: ``irn``, ``edam`` or ``toco``:
    the record's ``official`` entry is the number that script prints for these maps (under
    ``native``, default the script's own threshold), with the script's label set. Maps must lie in
    [0, 1] unless ``normalize`` (``max`` or ``minmax``) rescales each one.
    """
    from wsss_bench.records import new_record

    # -- every option checked before any file is read
    if label_source not in LABEL_SOURCES:
        raise WsssBenchError(f"label source must be 'gt' or 'maps', got {label_source!r}")
    T = check_num_thresholds(num_thresholds)
    if native is not None and native_threshold is not None:
        raise WsssBenchError("give the native rule once (native or native_threshold)")
    rule = NativeRule.parse(native if native is not None else native_threshold)
    if official is not None and official not in SCRIPTS:
        raise WsssBenchError(f"official script must be one of {', '.join(SCRIPTS)}, got {official!r}")
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise WsssBenchError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
    official_rule = None
    if official is not None:
        if rule is None:
            rule = NativeRule.parse(DEFAULT_RULES[official])
        official_rule = rule
    cam_dir = Path(cam_dir)
    files = _map_sources(cam_dir, gt)
    ids = list(gt.masks)
    C = gt.classes.num_classes
    # the official count needs its own pass only when its label set differs from ours
    second = official is not None and LABEL_SETS[official] != label_source
    job = _MapJob(gt.masks, files, C, T, rule, label_source, normalize, official_rule if second else None,
                  LABEL_SETS[official] if second else None)
    ev = SweepEvaluator(C, T, native_rule=rule)
    off_ev = SweepEvaluator(C, 1, native_rule=official_rule, keep_per_image=False) if second else None
    missing = 0
    digests: dict[str, str] = {}
    dtypes: set[str] = set()
    w = default_workers(len(ids)) if workers is None else workers
    for part in run_pool(job, ids, w):
        ev.merge(part.ev)
        if off_ev is not None:
            off_ev.merge(part.official)
        digests.update(part.digests)
        missing += part.missing
        dtypes |= part.dtypes
        if progress:
            progress(len(digests), len(ids))
    res = ev.results()
    extra: dict[str, Any] = {}
    if official is not None:
        src = off_ev if off_ev is not None else ev
        extra["official"] = official_entry(official, src.native_confusion(with_ignore=True), **rule.to_dict())
    record = new_record("pseudo_label", gt.dataset, gt.split, gt.classes.names, len(ids),
                        fingerprint_from_digests(digests), name=name or f"eval-{cam_dir.name}",
                        source=str(cam_dir), label_source=label_source, images_missing_class_maps=missing,
                        num_thresholds=T, map_dtypes=sorted(dtypes), normalize=normalize, **res, **extra)
    counts = ev.per_image_counts(res["best_threshold_index"])
    counts["threshold"] = np.asarray(res["best_threshold"])
    record["counts_threshold"] = res["best_threshold"]
    return record, counts
