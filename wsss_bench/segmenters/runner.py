"""Final segmentation over a split: a segmenter under a test-time protocol, scored in one pass.

:func:`run_segmentation` is what ``wsss-bench run --stage segmentation`` calls. It streams the
split through a DataLoader (``workers`` processes decode images and, under ``resize="opencv-uint8"``,
make the uint8 views with OpenCV: :func:`wsss_bench.segmenters.tta.prepare_views`), groups
same-size images into batches of up to ``batch_size``, runs :func:`predict_samples` on ``device``
under ``precision`` autocast, and feeds each hard prediction to the
:class:`~wsss_bench.metrics.confusion.ConfusionEvaluator`; nothing keeps all predictions in
memory. Under ``torchrun`` each rank evaluates its shard and the confusion is summed
(:mod:`wsss_bench.inference.distributed`).

On a split without ground truth (VOC ``test``: ``dataset.mask_path(id) is None``) it writes the
palette PNGs and, for VOC, the evaluation-server archive (:func:`wsss_bench.reports.export_voc_test`)
instead of scoring.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_bench.data.base import Sample, SegDataset, fingerprint_of
from wsss_bench.errors import CarryUserErrors, WsssBenchError, raise_carried
from wsss_bench.inference import distributed as D
from wsss_bench.inference.device import autocast_context, peak_memory, resolve_device
from wsss_bench.io import write_index_png
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.records import new_record
from wsss_bench.segmenters.base import Segmenter, TestTimeSettings
from wsss_bench.segmenters.tta import PreparedViews, decide, fused_scores, prepare_views, stack_views

Progress = Callable[[int, int], None]


class _Items(Dataset):
    """Yields ``(sample, prepared views)`` per image index (runs in the DataLoader workers)."""

    def __init__(self, ds: SegDataset, indices: list[int], settings: TestTimeSettings):
        self.ds, self.indices, self.settings = ds, indices, settings

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Sample, PreparedViews]:
        sample = self.ds[self.indices[i]]
        return sample, prepare_views(sample.image, self.settings)


def _batches(items: Iterator[tuple[Sample, PreparedViews]], batch_size: int
             ) -> Iterator[list[tuple[Sample, PreparedViews]]]:
    """Group items whose images have the same size into batches of at most ``batch_size``."""
    pending: dict[tuple[int, ...], list[tuple[Sample, PreparedViews]]] = {}
    for item in items:
        key = tuple(item[0].image.shape)
        pending.setdefault(key, []).append(item)
        if len(pending[key]) >= batch_size:
            yield pending.pop(key)
    yield from pending.values()


def fused_samples(segmenter: Segmenter, samples: list[Sample], settings: TestTimeSettings,
                  device: torch.device | str = "cpu", precision: str = "fp32",
                  prepared: list[PreparedViews] | None = None) -> torch.Tensor:
    """Fused scores [B, C, H, W] (float32; probabilities or logits, see
    :func:`~wsss_bench.segmenters.tta.fused_scores`) of same-size samples (one batch).

    ``prepared``: the samples' uint8 views from :func:`~wsss_bench.segmenters.tta.prepare_views` (made
    here when not given and the settings need them).
    """
    device = torch.device(device)
    raw = [s.image for s in samples]
    if len({r.shape for r in raw}) != 1:
        raise WsssBenchError("a batch needs images of one size")
    images = torch.from_numpy(np.stack(raw)).to(device)
    x = segmenter.normalize(images)
    if prepared is None:
        prepared = [prepare_views(r, settings) for r in raw]
    views = stack_views(prepared, segmenter.normalize, device)

    def logits_fn(v: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, precision):
            return segmenter.logits(v)

    with torch.no_grad():
        return fused_scores(logits_fn, x, settings, views=views)


def predict_samples(segmenter: Segmenter, samples: list[Sample], settings: TestTimeSettings,
                    device: torch.device | str = "cpu", precision: str = "fp32",
                    prepared: list[PreparedViews] | None = None) -> list[np.ndarray]:
    """uint8 class-index predictions [H, W] of same-size samples (one batch)."""
    fused = fused_samples(segmenter, samples, settings, device, precision, prepared)
    raw = [s.image for s in samples] if settings.crf is not None else None
    pred = decide(fused, settings, raw)
    return [p.to(torch.uint8).cpu().numpy() for p in pred]


def run_segmentation(segmenter: Segmenter, dataset: SegDataset, settings: str | TestTimeSettings = "standard",
                     device: str = "cpu", precision: str = "fp32", batch_size: int = 1, workers: int = 0,
                     save_pred: str | os.PathLike | None = None, progress: Progress | None = None,
                     limit: int | None = None, *, name: str | None = None, checkpoint: str | None = None,
                     checkpoint_sha256: str | None = None, export: str | os.PathLike | None = None,
                     comp: str = "comp6") -> tuple[dict[str, Any] | None, dict[str, np.ndarray] | None]:
    """Run ``segmenter`` (built, checkpoint loaded) over ``dataset`` and score it.

    - ``settings``: ``"standard"``, ``"native"``, ``"standard+crf"``, ``"native+crf"`` or a
      :class:`TestTimeSettings`.
    - ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; ``precision``: ``fp32``, ``bf16``, ``fp16``
      (autocast for the network only; fusion runs in float32).
    - ``batch_size``: same-size images per forward pass (each view's flip is always in the same pass);
      ``workers``: DataLoader processes decoding images; ``limit``: only the first ``limit`` ids.
    - ``save_pred``: folder for ``<id>.png`` palette predictions (the dataset's palette).
    - ``export``/``comp``: on a split without ground truth, where to write the VOC server archive
      (default ``<save_pred>.tar.gz``) and its competition (``comp6``: outside data, e.g. ImageNet).
    - ``name``/``checkpoint``/``checkpoint_sha256``: copied into the record.

    Returns ``(record, counts)``: a ``segmentation`` record (not yet written; pass both to
    :func:`wsss_bench.records.write_record`) and the per-image TP/FP/FN arrays. On a split without
    ground truth nothing is scored: it returns ``(info, None)`` with ``info`` =
    ``{"kind": "export", "predictions": DIR, "export": PATH or None, "num_images": N}``. Under
    ``torchrun`` only rank 0 returns results; other ranks return ``(None, None)``.

    ``timings`` (in both): ``images_per_second``, ``seconds``, ``peak_rss_mb`` (the process) and
    ``peak_device_memory_mb`` (CUDA, else None), as the pseudo-label runner records them
    (:func:`wsss_bench.inference.device.peak_memory`; under ``torchrun`` the maximum over ranks).
    """
    if batch_size < 1:
        raise WsssBenchError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise WsssBenchError(f"limit must be >= 1, got {limit}")
    s = segmenter.settings(settings)
    if segmenter.num_classes != dataset.classes.num_classes:
        raise WsssBenchError(f"segmenter {segmenter.name!r} predicts {segmenter.num_classes} classes but "
                             f"{dataset.name} has {dataset.classes.num_classes} (background included)")
    dev = resolve_device(device)
    autocast_context(dev, precision)  # validates the precision before any work
    dev, info = D.setup_device(dev)
    try:
        return _run(segmenter, dataset, s, dev, precision, batch_size, workers, save_pred, progress, limit,
                    name, checkpoint, checkpoint_sha256, export, comp, info)
    finally:
        D.teardown(info)


def _run(segmenter: Segmenter, ds: SegDataset, s: TestTimeSettings, dev: torch.device, precision: str,
         batch_size: int, workers: int, save_pred: str | os.PathLike | None, progress: Progress | None,
         limit: int | None, name: str | None, checkpoint: str | None, sha: str | None,
         export: str | os.PathLike | None, comp: str, info: D.DistInfo
         ) -> tuple[dict[str, Any] | None, dict[str, np.ndarray] | None]:
    if segmenter.model is None:
        segmenter.build()
    segmenter.model.to(dev).eval()
    ids = ds.ids[:limit] if limit else list(ds.ids)
    scored = ds.has_masks()
    pred_dir = Path(save_pred) if save_pred is not None else None
    tmp_dir: tempfile.TemporaryDirectory | None = None
    if not scored and pred_dir is None:
        if export is None:
            raise WsssBenchError(f"split {ds.split!r} has no ground truth: give save_pred (--save-pred DIR) or "
                                 "export (the server archive) to keep the predictions", ds.root)
        if info.active:
            raise WsssBenchError("a distributed test-split export needs save_pred (a folder all ranks share)")
        tmp_dir = tempfile.TemporaryDirectory(prefix=".wsss-bench-preds-", dir=Path(export).parent)
        pred_dir = Path(tmp_dir.name)
    try:
        index = {image_id: i for i, image_id in enumerate(ds.ids)}
        my_ids = D.shard(ids, info)
        loader = raise_carried(DataLoader(CarryUserErrors(_Items(ds, [index[i] for i in my_ids], s)), batch_size=None,
                                          shuffle=False, num_workers=workers, collate_fn=lambda x: x,
                                          prefetch_factor=4 if workers else None))
        ev = ConfusionEvaluator(ds.classes.num_classes, device=dev)
        done = 0
        t0: float | None = None
        for group in _batches(iter(loader), batch_size):
            if t0 is None:
                t0 = time.perf_counter()
            samples = [item[0] for item in group]
            preds = predict_samples(segmenter, samples, s, dev, precision, [item[1] for item in group])
            for sample, pred in zip(samples, preds, strict=True):
                if pred_dir is not None:
                    write_index_png(pred_dir / f"{sample.id}.png", pred, ds.classes.palette)
                if scored:
                    if sample.mask is None:
                        raise WsssBenchError(f"image {sample.id!r} has no ground truth", ds.root)
                    ev.update(torch.from_numpy(pred).to(dev), torch.from_numpy(sample.mask).to(dev),
                              image_id=sample.id, name=str(ds.mask_path(sample.id)))
                done += 1
                if progress:
                    progress(done, len(my_ids))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0 if t0 is not None else 0.0
        seconds = D.all_max_float(seconds, info)
        peaks = {k: (D.all_max_float(v, info) if v is not None else None) for k, v in peak_memory(dev).items()}
        timings = {"images_per_second": round(len(ids) / seconds, 3) if seconds > 0 else None,
                   "seconds": round(seconds, 3), **peaks,
                   "world_size": info.world_size, "batch_size": batch_size, "workers": workers,
                   "precision": precision}

        if not scored:
            D.barrier(info)
            if not info.is_main:
                return None, None
            out = None
            if ds.name == "voc":
                from wsss_bench.reports import export_voc_test

                target = Path(export) if export is not None else pred_dir.with_name(pred_dir.name + ".tar.gz")
                out = export_voc_test(pred_dir, target, ids=ids, comp=comp)
            keep = None if tmp_dir is not None else str(pred_dir.resolve())
            return {"kind": "export", "predictions": keep, "export": None if out is None else str(out),
                    "num_images": len(ids), "segmenter": segmenter.name, "settings": s.to_dict(),
                    "timings": timings}, None

        D.sync_evaluator(ev, info)
        if not info.is_main:
            return None, None
        record = new_record(
            "segmentation", ds.name, ds.split, ds.classes.names, len(ids),
            fingerprint_of({i: ds.mask_path(i) for i in ids}), device=str(dev),
            name=name or f"{segmenter.name}-{s.name}", segmenter=segmenter.name,
            variant="crf" if s.crf is not None else None, backbone=segmenter.backbone_label,
            settings=s.to_dict(), hyperparameters=dict(segmenter.hparams),
            checkpoint=None if checkpoint is None else os.path.abspath(checkpoint), checkpoint_sha256=sha,
            data_root=os.path.abspath(str(ds.root)), limit=limit, metrics=ev.metrics(), timings=timings,
            pred_dir=None if pred_dir is None else os.path.abspath(pred_dir),
            **dict(segmenter.record_fields),
        )
        return record, ev.per_image_counts()
    finally:
        if tmp_dir is not None:
            tmp_dir.cleanup()
