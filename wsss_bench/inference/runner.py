"""The inference runner: a method's localisation maps over a split, scored in the same pass.

``run_method(RunConfig(...))`` validates the options, builds the dataset and the adapter, loads the
checkpoint, and streams the images: loader workers read each image and make its Pillow views
(:mod:`~wsss_bench.inference.loading`), the device runs the method's whole native pipeline
(:mod:`~wsss_bench.inference.maps`, :mod:`~wsss_bench.inference.tta`), and the float32 maps go
straight to the :class:`~wsss_bench.metrics.sweep.SweepEvaluator`. Nothing keeps all maps in
memory. ``save_cams`` keeps each image's maps (:mod:`~wsss_bench.inference.cache`) and makes the
run resumable; ``save_pseudo`` writes pseudo-label PNGs (:mod:`~wsss_bench.inference.pseudo`).
Output locations are checked before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import distributed as D
from wsss_bench.inference.cache import cache_identity, open_cache, write_entry
from wsss_bench.inference.config import RunConfig
from wsss_bench.inference.device import peak_memory, resolve_device
from wsss_bench.inference.loading import Items, batches, iterate
from wsss_bench.inference.maps import build_adapter, compute_maps, resolve_settings
from wsss_bench.inference.pseudo import label_rule, pseudo_json, write_pseudo_json, write_pseudo_labels
from wsss_bench.inference.refinement import make_refiner, refinement_params
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.official import official_for_adapter
from wsss_bench.metrics.rules import NativeRule
from wsss_bench.metrics.sweep import SweepEvaluator
from wsss_bench.records import new_record, slug, write_record

Progress = Callable[[int, int], None]


@dataclass
class RunResult:
    record: dict[str, Any] | None
    record_path: Path | None
    counts: dict[str, np.ndarray] | None


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Fail before any work if ``path`` cannot become a writable folder (a file of that name, a
    read-only parent)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WsssBenchError(f"{option} must be a folder, but a file of that name exists", p)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise WsssBenchError(f"{option}: {probe} is a file, so the folder cannot be made", p)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise WsssBenchError(f"{option}: {probe} is not writable", p)


def fingerprint_ids(ds: Any, ids: list[str]) -> str:
    from wsss_bench.data.base import fingerprint_of

    return fingerprint_of({i: ds.mask_path(i) for i in ids})


def run_method(cfg: RunConfig, progress: Progress | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Run one method over one split; write the record (rank 0) and return it."""
    from wsss_bench.data import build_dataset

    cfg.validate()
    for option, value in (("--out", cfg.out), ("--save-cams", cfg.save_cams), ("--save-pseudo", cfg.save_pseudo)):
        if value:
            check_output_folder(value, option)
    log = log or (lambda msg: None)
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
    refiner = make_refiner(cfg)
    name = cfg.run_name()
    out = Path(cfg.out)

    cams_dir = Path(cfg.save_cams) if cfg.save_cams else None
    if cfg.save_pseudo and cams_dir is None:
        cams_dir = out / f"{name}-maps"
    if cams_dir is not None:
        identity = cache_identity(method=cfg.method, backbone=adapter.backbone, checkpoint_sha256=sha,
                                  hyperparameters=adapter.hparams, settings=settings.to_dict(),
                                  dataset=cfg.dataset, data_root=ds.root, precision=cfg.precision,
                                  map_dtype=cfg.cache_dtype)
        open_cache(cams_dir, identity, cfg.fresh, info.is_main)
        D.barrier(info)
    use_cache = cams_dir is not None and not cfg.fresh
    map_dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32

    my_ids = D.shard(ids, info)
    native = (settings.background.rule, float(settings.background.value))
    ev = SweepEvaluator(ds.classes.num_classes, cfg.num_thresholds, device=device, native_rule=native)
    ref_ev = ConfusionEvaluator(ds.classes.num_classes, device=device) if refiner else None
    items = Items(ds, [index[i] for i in my_ids], settings, cams_dir if use_cache else None, cfg.cache_dtype)
    stats = {"cached": 0, "computed": 0, "recomputed_corrupt": 0}
    done = 0
    t_first: float | None = None
    for group in batches(iter(iterate(items, cfg.workers)), 1 if adapter.needs_grad else cfg.batch_size):
        if t_first is None:
            t_first = time.perf_counter()
        samples = [g.sample for g in group]
        if group[0].cached is not None:
            maps = [torch.from_numpy(group[0].cached).to(device)]
            stats["cached"] += 1
        else:
            for g in group:
                if g.status.startswith("corrupt"):
                    stats["recomputed_corrupt"] += 1
                    warnings.warn(f"recomputing unusable cache entry: {g.status[len('corrupt: '):]}",
                                  RuntimeWarning, stacklevel=1)
            maps = [m.to(map_dtype) for m in
                    compute_maps(adapter, samples, settings, device, cfg.precision, [g.prepared for g in group])]
            stats["computed"] += len(samples)
        for s, m in zip(samples, maps, strict=True):
            classes = np.nonzero(s.labels)[0] + 1
            if cams_dir is not None and group[0].cached is None:
                write_entry(cams_dir, s.id, classes, m.cpu().numpy())
            gt = torch.from_numpy(s.mask).to(device)
            mf = m.float()
            ev.update(mf, torch.from_numpy(classes), gt, image_id=s.id, name=str(ds.mask_path(s.id)))
            if refiner is not None:
                ref_ev.update(refiner(s, mf, classes), gt, image_id=s.id)
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
    res = ev.results()
    # beside the protocol's number, the one the method's own evaluation script prints for these maps
    # (its label set is the image labels, as here, and its threshold the native one)
    official = official_for_adapter(adapter.name, ev.native_confusion(with_ignore=True))
    if official is not None:
        official.update(ev.native_rule.to_dict())

    rule, labels_miou = None, None
    if cfg.save_pseudo:
        rule = label_rule(cfg.threshold, res, native)
        # the PNGs are scored as they are written (exactly, for any rule); with an ignore band their
        # 255 pixels are unlabelled, which the hard-mask protocol does not score, so no number is given
        label_ev = ConfusionEvaluator(ds.classes.num_classes) if cfg.ignore_band is None else None
        write_pseudo_labels(ds, my_ids, cams_dir, Path(cfg.save_pseudo), rule, cfg.ignore_band, label_ev)
        if label_ev is not None:
            D.sync_evaluator(label_ev, info)
            labels_miou = label_ev.metrics()["miou"]
        D.barrier(info)

    if not info.is_main:
        return RunResult(None, None, None)
    counts = ev.per_image_counts(res["best_threshold_index"])
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
        cams_dir=None if cams_dir is None else os.path.abspath(cams_dir), map_dtype=cfg.cache_dtype,
        pseudo_dir=None if not cfg.save_pseudo else os.path.abspath(cfg.save_pseudo),
        limit=cfg.limit, num_thresholds=cfg.num_thresholds, cache=stats, timings=timings,
        **res, **({} if official is None else {"official": official}), **dict(adapter.record_fields),
    )
    record["counts_threshold"] = res["best_threshold"]
    if rule is not None:
        threshold_rule = cfg.threshold if cfg.threshold in ("best", "native", "calibrated") else "value"
        t_equiv = NativeRule.parse(rule).threshold
        record.update(pseudo_threshold=t_equiv, pseudo_threshold_rule=threshold_rule,
                      pseudo_rule={"rule": rule[0], "value": rule[1]}, pseudo_labels_miou=labels_miou)
    path = write_record(out, record, counts, stem=name)
    log(f"record: {path}")
    if rule is not None:
        write_pseudo_json(cfg.save_pseudo, pseudo_json(record, t_equiv, threshold_rule, labels_miou,
                                                       cfg.ignore_band, record_file=path))
    if ref_ev is not None:
        refined = {k: v for k, v in record.items()
                   if k not in ("sweep", "best_threshold", "best_threshold_index", "calibrated", "native", "official",
                                "counts_threshold", "metrics", "per_image_counts", "cams_dir", "pseudo_dir")}
        refined.update(name=f"{name}-{slug(cfg.refine)}", variant=cfg.refine, metrics=ref_ev.metrics(),
                       refinement=refinement_params(cfg))
        rpath = write_record(out, refined, ref_ev.per_image_counts(), stem=refined["name"])
        log(f"record ({cfg.refine}): {rpath}")
    return RunResult(record, path, counts)


def run_segmentation_stage(cfg: RunConfig, progress: Progress | None = None) -> RunResult:
    """Final segmentation: a :class:`~wsss_bench.segmenters.base.Segmenter` over a split, scored by
    the confusion evaluator (or exported for the VOC server on a split without ground truth)."""
    from wsss_bench.data import build_dataset
    from wsss_bench.segmenters.registry import create_segmenter
    from wsss_bench.segmenters.runner import run_segmentation

    cfg.validate()
    for option, value in (("--out", cfg.out), ("--save-pred", cfg.save_pred)):
        if value:
            check_output_folder(value, option)
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
