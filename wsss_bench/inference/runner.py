"""The inference runner: a method's localisation maps over a split, scored in the same pass.

``run_method(RunConfig(...))`` builds the dataset and the adapter, loads the checkpoint, makes the
test-time views, runs the adapter, fuses and normalises the maps on the device, rounds them to the
cache precision (float16) and feeds them straight to the :class:`SweepEvaluator`. Nothing keeps all
maps in memory. ``save_cams`` writes each image's maps as ``<id>.npz`` and doubles as a resumable
cache: a rerun with the same method, checkpoint and settings reads them back instead of running the
model, and since the evaluator always sees float16-rounded maps, the record is identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_bench.errors import CarryUserErrors, WsssBenchError, raise_carried
from wsss_bench.inference import distributed as D
from wsss_bench.inference.tta import fuse_views, make_views, normalise_maps, to_tensor_image
from wsss_bench.io import atomic_write_json, load_cam_file, save_cam_file, write_index_png
from wsss_bench.methods.base import STANDARD_SETTINGS, InferenceSettings, MethodAdapter
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.sweep import SweepEvaluator, quantise_scores, top_class
from wsss_bench.records import new_record, slug, write_record

CACHE_MANIFEST = "wsss-bench-cache.json"
CACHE_DTYPE = torch.float16
Progress = Callable[[int, int], None]


@dataclass
class RunConfig:
    """Everything a pseudo-label run needs. CLI flags and suite-file keys map onto these fields."""

    method: str
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str = "train"
    checkpoint: str | None = None
    backbone: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    settings: str = "native"
    scales: tuple[float, ...] | None = None
    flip: bool | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 0
    out: str = "wsss-bench-runs"
    name: str | None = None
    save_cams: str | None = None
    fresh: bool = False
    save_pseudo: str | None = None
    threshold: str = "best"
    ignore_band: tuple[float, float] | None = None
    num_thresholds: int = 100
    limit: int | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: ``pseudo`` (localisation maps, this module) or ``segmentation`` (a Segmenter, see
    #: :func:`run_segmentation_stage`); ``segmenter`` names it, ``save_pred`` keeps its PNGs.
    #: Optional refinement reported as a separate record (never the headline): ``crf``,
    #: ``saliency`` or ``crf+saliency`` (EDAM's rules, :mod:`wsss_bench.refine`).
    refine: str | None = None
    saliency_dir: str | None = None
    stage: str = "pseudo"
    segmenter: str | None = None
    save_pred: str | None = None

    def run_name(self) -> str:
        if self.name:
            return self.name
        parts = [self.segmenter if self.stage == "segmentation" else self.method, self.settings]
        if self.hparams:
            parts += [f"{k}={v}" for k, v in sorted(self.hparams.items())]
        return slug("-".join(str(p) for p in parts))


@dataclass
class RunResult:
    record: dict[str, Any] | None
    record_path: Path | None
    counts: dict[str, np.ndarray] | None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise WsssBenchError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WsssBenchError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WsssBenchError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise WsssBenchError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise WsssBenchError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise WsssBenchError("fp16 autocast needs a CUDA device (use bf16 or fp32 on the CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_settings(adapter: MethodAdapter, cfg: RunConfig) -> InferenceSettings:
    if cfg.settings == "native":
        s = adapter.native
    elif cfg.settings == "standard":
        s = STANDARD_SETTINGS.replace(background=adapter.native.background)
    else:
        raise WsssBenchError(f"settings must be 'native' or 'standard', got {cfg.settings!r}")
    if cfg.scales is not None:
        s = s.replace(scales=tuple(float(x) for x in cfg.scales))
    if cfg.flip is not None:
        s = s.replace(flip=bool(cfg.flip))
    return s


def build_adapter(cfg: RunConfig, num_foreground: int) -> tuple[MethodAdapter, str | None]:
    """Instantiate, build and load the adapter; returns it and the checkpoint's SHA-256."""
    from wsss_bench.methods.registry import load_method

    cls = load_method(cfg.method)
    adapter = cls(num_foreground, backbone=cfg.backbone, hparams=cfg.hparams)
    adapter.build()
    sha = None
    if cfg.checkpoint:
        sha = adapter.load_checkpoint(cfg.checkpoint)
    elif adapter.needs_checkpoint:
        raise WsssBenchError(f"method {cfg.method!r} needs --checkpoint (a {cfg.method} checkpoint file)")
    adapter.model.eval()
    return adapter, sha


# -- the map cache -------------------------------------------------------------------------------


def cache_identity(cfg: RunConfig, adapter: MethodAdapter, settings: InferenceSettings,
                   sha: str | None, data_root: str | Path) -> dict[str, Any]:
    """What the cached maps depend on. Entries are keyed by image id, so the dataset's folder is part
    of it: two copies of a dataset (say VOC and an edited copy) share ids but not pixels."""
    return {"method": cfg.method, "backbone": adapter.backbone, "checkpoint_sha256": sha,
            "hyperparameters": adapter.hparams, "settings": settings.to_dict(), "dataset": cfg.dataset,
            "data_root": os.path.abspath(str(data_root)), "precision": cfg.precision, "map_dtype": "float16"}


def open_cache(path: Path, identity: dict[str, Any], fresh: bool, is_main: bool) -> None:
    import json

    manifest = path / CACHE_MANIFEST
    if manifest.is_file() and not fresh:
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WsssBenchError(f"unreadable cache manifest ({e}); use --fresh to rebuild", manifest) from None
        norm = json.loads(json.dumps(identity))
        diff = [k for k in sorted(set(old) | set(norm)) if old.get(k) != norm.get(k)]
        if diff:
            raise WsssBenchError(f"the map cache was written by a different run ({', '.join(diff)} differ); "
                                 f"use --fresh to overwrite it or another --save-cams folder", manifest)
    elif is_main:
        if not fresh and path.is_dir() and any(not p.name.startswith(".") for p in path.glob("*.npz")):
            # a run writes the manifest before its first entry, so these maps came from elsewhere
            raise WsssBenchError(f"holds .npz files but no {CACHE_MANIFEST}: not a wsss-bench map cache; "
                                 f"use another --save-cams folder (or --fresh to delete them)", path)
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for p in path.glob("*.npz"):
                p.unlink()
        atomic_write_json(manifest, identity)
    if is_main:
        # temporary files of entries a killed process was writing (io.atomic_path names them
        # ".<id>.<random>.tmp.npz"); never read as entries, removed so the folder holds maps only
        for p in path.glob(".*.tmp.npz"):
            with contextlib.suppress(OSError):
                p.unlink()


def read_cached(path: Path, image_id: str, labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(maps or None, status): ``hit``, ``miss`` or ``corrupt: <reason>``."""
    p = path / f"{image_id}.npz"
    if not p.is_file():
        return None, "miss"
    try:
        classes, scores = load_cam_file(p)
    except WsssBenchError as e:
        return None, f"corrupt: {e}"
    want = np.nonzero(labels)[0] + 1
    if not np.array_equal(np.sort(classes), want) or tuple(scores.shape[1:]) != tuple(size):
        return None, f"corrupt: {p}: classes or size do not match the image"
    order = np.argsort(classes)
    return scores[order], "hit"


# -- data loading --------------------------------------------------------------------------------


class _Items(Dataset):
    """Yields (sample, cached maps or None, cache status) in DataLoader workers."""

    def __init__(self, ds: Any, indices: list[int], cache: Path | None):
        self.ds, self.indices, self.cache = ds, indices, cache

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, np.ndarray | None, str]:
        s = self.ds[self.indices[i]]
        if self.cache is None:
            return s, None, "off"
        maps, status = read_cached(self.cache, s.id, s.labels, s.image.shape[:2])
        return s, maps, status


def _loader(items: _Items, workers: int) -> Iterator[tuple[Any, np.ndarray | None, str]]:
    loader = DataLoader(CarryUserErrors(items), batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=lambda x: x, persistent_workers=False, prefetch_factor=4 if workers else None)
    return raise_carried(loader)


def compute_maps(adapter: MethodAdapter, samples: list[Any], settings: InferenceSettings,
                 device: torch.device, precision: str) -> list[torch.Tensor]:
    """Fused, normalised maps [K_i, H, W] (float32 on ``device``) for same-size samples."""
    H, W = samples[0].image.shape[:2]
    img = torch.cat([to_tensor_image(s.image, device) for s in samples])
    per_image = [torch.from_numpy(np.nonzero(s.labels)[0]).long() for s in samples]
    union = torch.unique(torch.cat(per_image)) if per_image else torch.zeros(0, dtype=torch.long)
    if union.numel() == 0:
        return [torch.zeros(0, H, W, device=device) for _ in samples]
    views = make_views(img, settings, adapter.mean, adapter.std)
    grad = torch.enable_grad() if adapter.needs_grad else torch.no_grad()
    with grad, autocast_context(device, precision):
        outs = [adapter.forward_maps(v, union.to(device)).detach().float() for _, v in views]
    fused = fuse_views(outs, (H, W), settings, len(samples))  # [B, K_union, H, W]
    pos = {int(c): i for i, c in enumerate(union)}
    result = []
    for b, cls in enumerate(per_image):
        sel = torch.tensor([pos[int(c)] for c in cls], dtype=torch.long, device=device)
        result.append(normalise_maps(fused[b].index_select(0, sel), settings))
    return result


def _buckets(stream: Iterator[tuple[Any, np.ndarray | None, str]], batch_size: int
             ) -> Iterator[list[tuple[Any, np.ndarray | None, str]]]:
    """Group items needing the model by image size into batches; cached items pass alone."""
    pending: dict[tuple[int, int], list] = {}
    for item in stream:
        if item[1] is not None or batch_size <= 1:
            yield [item]
            continue
        key = item[0].image.shape[:2]
        pending.setdefault(key, []).append(item)
        if len(pending[key]) >= batch_size:
            yield pending.pop(key)
    yield from pending.values()


def peak_memory(device: torch.device) -> dict[str, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0**2)
    dev = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": round(rss, 1), "peak_device_memory_mb": None if dev is None else round(dev, 1)}


# -- the run ---------------------------------------------------------------------------------------


def run_method(cfg: RunConfig, progress: Progress | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Run one method over one split; write the record (rank 0) and return it."""
    from wsss_bench.data import build_dataset

    log = log or (lambda msg: None)
    if cfg.data_root is None:
        raise WsssBenchError("--data-root is required")
    if cfg.batch_size < 1:
        raise WsssBenchError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.num_thresholds < 1:
        raise WsssBenchError("--thresholds must be >= 1")
    if cfg.workers < 0:
        raise WsssBenchError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.limit is not None and cfg.limit < 1:
        raise WsssBenchError(f"--limit must be >= 1, got {cfg.limit}")
    device, info = D.setup_device(resolve_device(cfg.device))
    try:
        return _run(cfg, device, info, progress, log, build_dataset)
    finally:
        D.teardown(info)


def _run(cfg: RunConfig, device: torch.device, info: D.DistInfo, progress: Progress | None,
         log: Callable[[str], None], build_dataset: Callable[..., Any]) -> RunResult:
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, **cfg.dataset_options)
    if not ds.has_masks():
        raise WsssBenchError(f"split {cfg.split!r} has no ground truth; pseudo-label quality needs masks "
                             f"(use --stage segmentation for test-server exports)", ds.root)
    ids = ds.ids[: cfg.limit] if cfg.limit else list(ds.ids)
    index = {image_id: i for i, image_id in enumerate(ds.ids)}
    adapter, sha = build_adapter(cfg, ds.classes.num_foreground)
    adapter.model.to(device)
    settings = resolve_settings(adapter, cfg)
    name = cfg.run_name()
    out = Path(cfg.out)

    cams_dir = Path(cfg.save_cams) if cfg.save_cams else None
    if cfg.save_pseudo and cams_dir is None:
        cams_dir = out / f"{name}-maps"
    if cams_dir is not None:
        open_cache(cams_dir, cache_identity(cfg, adapter, settings, sha, ds.root), cfg.fresh, info.is_main)
        D.barrier(info)
    use_cache = cams_dir is not None and not cfg.fresh

    refiner = make_refiner(cfg)
    my_ids = D.shard(ids, info)
    ev = SweepEvaluator(ds.classes.num_classes, cfg.num_thresholds, device=device)
    ref_ev = ConfusionEvaluator(ds.classes.num_classes, device=device) if refiner else None
    items = _Items(ds, [index[i] for i in my_ids], cams_dir if use_cache else None)
    stats = {"cached": 0, "computed": 0, "recomputed_corrupt": 0}
    done = 0
    t_first: float | None = None
    for group in _buckets(iter(_loader(items, cfg.workers)), 1 if adapter.needs_grad else cfg.batch_size):
        if t_first is None:
            t_first = time.perf_counter()
        samples = [g[0] for g in group]
        if group[0][1] is not None:
            maps = [torch.from_numpy(group[0][1]).to(device)]
            stats["cached"] += 1
        else:
            for _, _, status in group:
                if status.startswith("corrupt"):
                    stats["recomputed_corrupt"] += 1
                    warnings.warn(f"recomputing unreadable cache entry: {status[len('corrupt: '):]}",
                                  RuntimeWarning, stacklevel=1)
            maps = compute_maps(adapter, samples, settings, device, cfg.precision)
            stats["computed"] += len(samples)
        for s, m in zip(samples, maps, strict=True):
            m16 = m.to(CACHE_DTYPE)
            classes = np.nonzero(s.labels)[0] + 1
            if cams_dir is not None and group[0][1] is None:
                save_cam_file(cams_dir / f"{s.id}.npz", classes, m16.cpu().numpy())
            gt = torch.from_numpy(s.mask).to(device)
            ev.update(m16.float(), torch.from_numpy(classes), gt, image_id=s.id, name=str(ds.mask_path(s.id)))
            if refiner is not None:
                ref_ev.update(refiner(s, m16.float(), classes), gt, image_id=s.id)
            done += 1
            if progress:
                progress(done, len(my_ids))
    seconds = time.perf_counter() - t_first if t_first is not None else 0.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    D.sync_evaluator(ev, info)
    if ref_ev is not None:
        D.sync_evaluator(ref_ev, info)
    for k in list(stats):
        stats[k] = D.all_sum_int(stats[k], info)
    seconds = D.all_max_float(seconds, info)
    native_t = settings.background.threshold()
    res = ev.results(native_threshold=native_t)
    j_counts = res["best_threshold_index"]

    if cfg.save_pseudo:
        j = _pseudo_threshold_index(cfg.threshold, res, ev)
        write_pseudo_labels(ds, my_ids, cams_dir, Path(cfg.save_pseudo), j, cfg.num_thresholds, cfg.ignore_band)
        D.barrier(info)

    if not info.is_main:
        return RunResult(None, None, None)
    counts = ev.per_image_counts(j_counts)
    counts["threshold"] = np.asarray(res["best_threshold"])
    timings = {"seconds": round(seconds, 3), "images": len(ids),
               "images_per_second": round(stats["computed"] / seconds, 3) if seconds > 0 and stats["computed"] else None,
               "world_size": info.world_size, "batch_size": cfg.batch_size, "workers": cfg.workers,
               "precision": cfg.precision, **peak_memory(device)}
    record = new_record(
        "pseudo_label", ds.name, ds.split, ds.classes.names, len(ids), fingerprint_ids(ds, ids),
        device=str(device), name=name, method=adapter.name, variant=None, backbone=adapter.backbone,
        settings={"name": cfg.settings, **settings.to_dict()}, hyperparameters=dict(adapter.hparams),
        checkpoint=None if cfg.checkpoint is None else os.path.abspath(cfg.checkpoint), checkpoint_sha256=sha,
        data_root=os.path.abspath(str(ds.root)), label_source=getattr(ds, "label_source", "mask"),
        cams_dir=None if cams_dir is None else os.path.abspath(cams_dir),
        pseudo_dir=None if not cfg.save_pseudo else os.path.abspath(cfg.save_pseudo),
        limit=cfg.limit, num_thresholds=cfg.num_thresholds, cache=stats, timings=timings,
        **res, **dict(adapter.record_fields),
    )
    record["counts_threshold"] = res["best_threshold"]
    path = write_record(out, record, counts, stem=name)
    log(f"record: {path}")
    if ref_ev is not None:
        refined = {k: v for k, v in record.items()
                   if k not in ("sweep", "best_threshold", "best_threshold_index", "calibrated", "native",
                                "counts_threshold", "metrics", "per_image_counts", "cams_dir", "pseudo_dir")}
        refined.update(name=f"{name}-{slug(cfg.refine)}", variant=cfg.refine, metrics=ref_ev.metrics(),
                       refinement=refinement_params(cfg))
        rpath = write_record(out, refined, ref_ev.per_image_counts(), stem=refined["name"])
        log(f"record ({cfg.refine}): {rpath}")
    return RunResult(record, path, counts)


REFINEMENTS = ("crf", "saliency", "crf+saliency")


def refinement_params(cfg: RunConfig) -> dict[str, Any]:
    from wsss_bench.refine import EDAM_CRF, EDAM_SALIENCY

    out: dict[str, Any] = {"rule": cfg.refine, "source": "EDAM (allenwu97/EDAM infer_cls.py, eval.py)"}
    if "crf" in (cfg.refine or ""):
        out["crf"] = dataclasses.asdict(EDAM_CRF)
        out["crf_background"] = "(1 - max) ** 1"
    if "saliency" in (cfg.refine or ""):
        out["saliency"] = {**dataclasses.asdict(EDAM_SALIENCY), "dir": os.path.abspath(cfg.saliency_dir or "")}
    return out


def make_refiner(cfg: RunConfig) -> Callable[[Any, torch.Tensor, np.ndarray], torch.Tensor] | None:
    """A function (sample, maps [K,H,W] in [0,1], classes 1-based) -> hard label [H, W], or None."""
    if not cfg.refine:
        return None
    if cfg.refine not in REFINEMENTS:
        raise WsssBenchError(f"--refine must be one of {', '.join(REFINEMENTS)}, got {cfg.refine!r}")
    from wsss_bench import refine as R

    use_crf = "crf" in cfg.refine
    use_sal = "saliency" in cfg.refine
    if use_crf and not R.crf_available():
        R.dense_crf(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1, 1), np.float32))  # raises the clear error
    if use_sal and not cfg.saliency_dir:
        raise WsssBenchError(f"--refine {cfg.refine} needs --saliency DIR (one <id>.png per image)")

    def refiner(sample: Any, maps: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
        H, W = maps.shape[-2:]
        ids = np.concatenate([np.zeros(1, np.int64), classes.astype(np.int64)])
        if maps.shape[0] == 0:
            return torch.zeros(H, W, dtype=torch.long, device=maps.device)
        scores = maps.clamp(0, 1).cpu().numpy()
        if use_crf:
            scores_all = R.dense_crf(sample.image, R.with_background(scores))
            if not use_sal:
                return torch.from_numpy(ids[np.argmax(scores_all, axis=0)]).to(maps.device)
            scores = scores_all[1:]
        sal = R.load_saliency(cfg.saliency_dir, sample.id, (H, W))
        return torch.from_numpy(R.apply_saliency(scores, sal, classes=classes)).to(maps.device)

    return refiner


def fingerprint_ids(ds: Any, ids: list[str]) -> str:
    from wsss_bench.data.base import fingerprint_of

    return fingerprint_of({i: ds.mask_path(i) for i in ids})


def _pseudo_threshold_index(threshold: str, res: dict[str, Any], ev: SweepEvaluator) -> int:
    if threshold == "best":
        return int(res["best_threshold_index"])
    if threshold == "native":
        return int(res["native"]["threshold_index"])
    if threshold == "calibrated":
        t = res["calibrated"]["threshold"]
        if t is None:
            raise WsssBenchError("no calibrated threshold (calibration subset empty); use best, native or a number")
        return ev.threshold_index(t)
    try:
        t = float(threshold)
    except ValueError:
        raise WsssBenchError(f"--threshold must be best, native, calibrated or a number, got {threshold!r}") from None
    if not 0.0 <= t < 1.0:
        raise WsssBenchError(f"--threshold must be in [0, 1), got {t}")
    return ev.threshold_index(t)


def pseudo_label(maps: torch.Tensor, classes: np.ndarray, j: int, T: int,
                 ignore_band: tuple[float, float] | None = None) -> np.ndarray:
    """The protocol's hard label at threshold index ``j``: the top class where floor(T*m) >= j,
    background elsewhere; with ``ignore_band=(lo, hi)``, 255 where lo <= m < hi."""
    H, W = maps.shape[-2:]
    if maps.shape[0] == 0:
        return np.zeros((H, W), np.uint8)
    cls = torch.as_tensor(classes, dtype=torch.long, device=maps.device)
    order = torch.argsort(cls)
    m, k = top_class(maps[order].float(), cls[order])
    label = torch.where(quantise_scores(m, T) >= j, k, torch.zeros_like(k))
    if ignore_band is not None:
        lo, hi = ignore_band
        mc = m.float().clamp(0, 1)
        label = torch.where((mc >= lo) & (mc < hi), torch.full_like(label, 255), label)
    return label.to(torch.uint8).cpu().numpy()


def write_pseudo_labels(ds: Any, ids: list[str], cams_dir: Path, out_dir: Path, j: int, T: int,
                        ignore_band: tuple[float, float] | None) -> None:
    """VOC-palette PNG pseudo labels at threshold index ``j``, read back from the map cache."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        classes, scores = load_cam_file(cams_dir / f"{image_id}.npz")
        label = pseudo_label(torch.from_numpy(scores), classes, j, T, ignore_band)
        write_index_png(out_dir / f"{image_id}.png", label, ds.classes.palette)


def remove_tree(path: Path) -> None:  # pragma: no cover - used by the demo's clean-up
    shutil.rmtree(path, ignore_errors=True)


def config_from_dict(d: dict[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from a suite-file table; unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                 for k in unknown]
        raise WsssBenchError(f"unknown key {', '.join(hints)} in {where}")
    if d.get("stage", "pseudo") == "segmentation":
        if not d.get("segmenter"):
            raise WsssBenchError(f"{where} has stage 'segmentation' but no 'segmenter'")
        d = {"method": "", **d}
    elif "method" not in d:
        raise WsssBenchError(f"{where} has no 'method'")
    d = dict(d)
    hints = typing.get_type_hints(RunConfig)
    for key, value in d.items():
        d[key] = _coerce(value, hints[key], f"key {key!r} in {where}")
    return RunConfig(**d)


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against a RunConfig field type (``int``, ``str | None``,
    ``tuple[float, ...]``, ...); a suite-file value of the wrong type is an error naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], what) if len(inner) == 1 else value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise WsssBenchError(f"{what} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WsssBenchError(f"{what} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WsssBenchError(f"{what} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WsssBenchError(f"{what} must be a string, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise WsssBenchError(f"{what} must be a table of KEY = VALUE, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise WsssBenchError(f"{what} must be a list, got {value!r}")
        n = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        if n is not None and len(value) != n:
            raise WsssBenchError(f"{what} must be a list of {n} values, got {value!r}")
        if not value:
            raise WsssBenchError(f"{what} must not be empty")
        return tuple(_coerce(v, args[0], what) for v in value)
    return value


def run_segmentation_stage(cfg: RunConfig, progress: Progress | None = None) -> RunResult:
    """Final segmentation: a :class:`~wsss_bench.segmenters.base.Segmenter` over a split, scored by
    the confusion evaluator (or exported for the VOC server on a split without ground truth)."""
    from wsss_bench.data import build_dataset
    from wsss_bench.segmenters.registry import create_segmenter
    from wsss_bench.segmenters.runner import run_segmentation

    if not cfg.segmenter:
        raise WsssBenchError("--stage segmentation needs --segmenter NAME (see `wsss-bench methods`)")
    if cfg.data_root is None:
        raise WsssBenchError("--data-root is required")
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, **cfg.dataset_options)
    seg = create_segmenter(cfg.segmenter, ds.classes.num_classes, backbone=cfg.backbone, hparams=cfg.hparams)
    if not cfg.checkpoint:
        raise WsssBenchError(f"segmenter {cfg.segmenter!r} needs --checkpoint")
    sha = seg.load_checkpoint(cfg.checkpoint)
    name = cfg.run_name()
    if cfg.save_pred is None and not ds.has_masks():
        cfg = dataclasses.replace(cfg, save_pred=str(Path(cfg.out) / f"{name}-pred"))
    record, counts = run_segmentation(
        seg, ds, cfg.settings, device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size,
        workers=cfg.workers, save_pred=cfg.save_pred, progress=progress, limit=cfg.limit, name=name,
        checkpoint=os.path.abspath(cfg.checkpoint), checkpoint_sha256=sha)
    if record is None or counts is None:  # another rank, or an export without scoring
        return RunResult(record, None, None)
    path = write_record(cfg.out, record, counts, stem=name)
    return RunResult(record, path, counts)
