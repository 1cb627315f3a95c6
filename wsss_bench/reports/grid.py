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


def _fit(pic: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize (nearest) to fit inside h x w, keeping the aspect ratio."""
    from PIL import Image

    scale = min(h / pic.shape[0], w / pic.shape[1])
    size = (max(1, round(pic.shape[1] * scale)), max(1, round(pic.shape[0] * scale)))
    im = Image.fromarray((pic * 255).astype(np.uint8)).resize(size, Image.NEAREST)
    return np.asarray(im, dtype=np.float32) / 255.0


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
    cmap = plt.get_cmap("jet")
    pos = {i: n for n, i in enumerate(ds.ids)}
    headers: list[str] = ["image", "ground truth"]
    for r in recs:
        headers += [f"{row_label(r)}\nlabel @ {float(r['best_threshold']):.2f}", f"{row_label(r)}\nmap"]
    rows: list[list[np.ndarray | None]] = []
    for image_id in ids:
        sample = ds[pos[image_id]]
        image = sample.image.astype(np.float32) / 255.0
        gt = sample.mask
        cells: list[np.ndarray | None] = [image]
        cells.append(None if gt is None else 0.45 * image + 0.55 * _colorize(gt, palette) / 255.0)
        for r in recs:
            classes, scores = load_cam_file(Path(r["cams_dir"]) / f"{image_id}.npz")
            if scores.shape[1:] != image.shape[:2]:
                cells += [None, None]  # a map of another size is not drawn
                continue
            if r.get("label_source") == "maps" or gt is None:
                label_set = [int(c) for c in classes]
            else:
                present = np.bincount(gt.reshape(-1), minlength=256)
                label_set = [c for c in range(1, len(r["classes"])) if present[c]]
            T = len((r.get("sweep") or {}).get("thresholds") or []) or 100
            j = int(min(max(round(float(r["best_threshold"]) * T), 0), T - 1))
            label, m = pseudo_label(classes, scores, label_set, j, T, image.shape[:2])
            cells.append(0.45 * image + 0.55 * _colorize(label, palette) / 255.0)
            cells.append(0.5 * image + 0.5 * cmap(m)[..., :3])
        rows.append(cells)
    # One mosaic image (fast to draw), each cell fitted into a fixed box, white gaps between.
    ch, cw, gap = 96, 128, 6
    mosaic = np.ones((len(rows) * (ch + gap), len(headers) * (cw + gap), 3), np.float32)
    for ri, cells in enumerate(rows):
        for ci, pic in enumerate(cells):
            if pic is not None:
                fitted = _fit(np.clip(pic, 0, 1), ch, cw)
                y0 = ri * (ch + gap) + (ch - fitted.shape[0]) // 2
                x0 = ci * (cw + gap) + (cw - fitted.shape[1]) // 2
                mosaic[y0:y0 + fitted.shape[0], x0:x0 + fitted.shape[1]] = fitted
    dpi = 100
    fig = plt.figure(figsize=(mosaic.shape[1] / dpi + 0.9, mosaic.shape[0] / dpi + 0.9), dpi=dpi)
    ax = fig.add_axes((0.9 / (mosaic.shape[1] / dpi + 0.9), 0.05, mosaic.shape[1] / dpi / (mosaic.shape[1] / dpi + 0.9),
                       mosaic.shape[0] / dpi / (mosaic.shape[0] / dpi + 0.9)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for ci, h in enumerate(headers):
        wrapped = "\n".join(textwrap.fill(part, 22) for part in h.split("\n"))
        ax.text(ci * (cw + gap) + cw / 2, -4, wrapped, ha="center", va="bottom", fontsize=6)
    for ri, image_id in enumerate(ids):
        ax.text(-6, ri * (ch + gap) + ch / 2, image_id, ha="right", va="center", fontsize=6, rotation=90)
    fig.suptitle(title, fontsize=9)
    paths = save_figure(fig, stem, dpi=dpi, svg=False)  # raster content: PNG only
    plt.close(fig)
    return paths, ids
