"""Qualitative grid: for N images, the image, its ground truth and each run's pseudo label and map.

Only runs that saved their maps (``cams_dir`` in the record, one ``<id>.npz`` per image) appear.
The pseudo label is rebuilt exactly as the protocol defines it at the record's best threshold
(the quantised top score, :mod:`wsss_bench.metrics.sweep`), over the image's label set (the
ground-truth classes, or the classes the map lists when the record says ``label_source: maps``).
Images are chosen reproducibly: the ids common to all runs, ordered by the SHA-1 of the id.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import load_cam_file
from wsss_bench.metrics.sweep import quantise_scores, top_class
from wsss_bench.reports.plots import _mpl, save_figure
from wsss_bench.reports.table import row_label


def pseudo_label(classes: np.ndarray, scores: np.ndarray, label_set: list[int], threshold_index: int,
                 num_thresholds: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(label uint8 HxW, top score float32 HxW) at threshold index ``j`` (PROTOCOL.md)."""
    index = {int(c): i for i, c in enumerate(classes)}
    labels = sorted(int(c) for c in label_set)
    if not labels:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    stack = np.stack([scores[index[c]].astype(np.float32) if c in index else np.zeros(shape, np.float32)
                      for c in labels])
    m, k = top_class(torch.from_numpy(stack), torch.tensor(labels, dtype=torch.long))
    b = quantise_scores(m, num_thresholds)
    label = torch.where(b >= threshold_index, k, torch.zeros_like(k))
    return label.numpy().astype(np.uint8), m.clamp(0, 1).numpy().astype(np.float32)


def choose_ids(ids: list[str], n: int) -> list[str]:
    """``n`` ids, reproducibly: ordered by SHA-1 of the id (independent of list order)."""
    return sorted(ids, key=lambda i: hashlib.sha1(i.encode("utf-8")).hexdigest())[:max(n, 0)]


def _dataset(record: dict[str, Any]) -> Any:
    from wsss_bench.data import build_dataset

    root = record.get("data_root")
    if not root:
        raise WsssBenchError("record has saved maps but no data_root to read images from", record.get("_path"))
    return build_dataset(record["dataset"], root, record["split"])


def _colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[mask]


def grid_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pseudo-label records of a group whose maps folder exists."""
    out = []
    for r in records:
        d = r.get("cams_dir")
        if r.get("kind") == "pseudo_label" and d and Path(d).is_dir() and r.get("best_threshold") is not None:
            out.append(r)
    return out


def qualitative_grid(records: list[dict[str, Any]], samples: int, stem: Path,
                     title: str) -> tuple[list[Path], list[str]]:
    """Draw the grid for ``records`` (leaderboard order) -> (written files, chosen ids)."""
    recs = grid_records(records)
    if not recs or samples <= 0:
        return [], []
    ds = _dataset(recs[0])
    palette = np.asarray(ds.classes.palette, dtype=np.uint8)
    if palette.shape[0] < 256:
        palette = np.concatenate([palette, np.zeros((256 - palette.shape[0], 3), np.uint8)])
    palette = palette.copy()
    palette[255] = (255, 255, 255)
    candidates = [i for i in ds.ids if all((Path(r["cams_dir"]) / f"{i}.npz").is_file() for r in recs)]
    ids = choose_ids(candidates, samples)
    if not ids:
        return [], []
    plt = _mpl()
    ncol = 2 + 2 * len(recs)
    fig, axes = plt.subplots(len(ids), ncol, figsize=(1.55 * ncol, 1.6 * len(ids) + 0.6), squeeze=False)
    cmap = plt.get_cmap("jet")
    pos = {i: n for n, i in enumerate(ds.ids)}
    for row, image_id in enumerate(ids):
        sample = ds[pos[image_id]]
        image = sample.image.astype(np.float32) / 255.0
        gt = sample.mask
        cells: list[tuple[str, np.ndarray | None]] = [("image", image)]
        cells.append(("ground truth", None if gt is None else 0.45 * image + 0.55 * _colorize(gt, palette) / 255.0))
        for r in recs:
            name = row_label(r)
            classes, scores = load_cam_file(Path(r["cams_dir"]) / f"{image_id}.npz")
            if scores.shape[1:] != image.shape[:2]:
                cells += [(f"{name}\n(map size differs)", None), ("", None)]
                continue
            if r.get("label_source") == "maps" or gt is None:
                label_set = [int(c) for c in classes]
            else:
                present = np.bincount(gt.reshape(-1), minlength=256)
                label_set = [c for c in range(1, len(r["classes"])) if present[c]]
            T = len((r.get("sweep") or {}).get("thresholds") or []) or 100
            j = int(min(max(round(float(r["best_threshold"]) * T), 0), T - 1))
            label, m = pseudo_label(classes, scores, label_set, j, T, image.shape[:2])
            cells.append((f"{name}\nlabel @ {j / T:.2f}", 0.45 * image + 0.55 * _colorize(label, palette) / 255.0))
            cells.append((f"{name}\nmap", 0.5 * image + 0.5 * cmap(m)[..., :3]))
        for col, (label_text, pic) in enumerate(cells):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if pic is not None:
                ax.imshow(np.clip(pic, 0, 1), interpolation="nearest")
            if row == 0:
                wrapped = "\n".join(textwrap.fill(part, 24) for part in label_text.split("\n"))
                ax.set_title(wrapped, fontsize=6)
        axes[row, 0].set_ylabel(image_id, fontsize=6)
    fig.suptitle(title, fontsize=9)
    paths = save_figure(fig, stem, dpi=100, svg=False)  # raster content: PNG only
    plt.close(fig)
    return paths, ids
