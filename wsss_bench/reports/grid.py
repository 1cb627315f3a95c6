"""Qualitative grid: for N images, the image, its ground truth and each run's pseudo label and map.

Laid out as one row per run and one column pair (label, map) per image, with a legend of the
class colours, so it stays readable with a dozen runs.

Only runs that saved their maps (``cams_dir`` in the record, one ``<id>.npz`` per image) appear.
The pseudo label is rebuilt exactly as the protocol defines it at the record's best threshold
(foreground where the top score exceeds float32(j / T), strictly: :func:`wsss_bench.metrics.rules.pseudo_label`), over the image's label set (the
ground-truth classes, or the classes the map lists when the record says ``label_source: maps``).
Images are chosen reproducibly: the ids common to all runs, ordered by the SHA-1 of the id.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import load_cam_file
from wsss_bench.metrics.rules import clamp_scores
from wsss_bench.metrics.rules import pseudo_label as protocol_label
from wsss_bench.reports.plots import _mpl, mpl_text, save_figure
from wsss_bench.reports.table import row_label


def pseudo_label(classes: np.ndarray, scores: np.ndarray, label_set: list[int], threshold_index: int,
                 num_thresholds: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(label uint8 HxW, top score float32 HxW) at threshold index ``j`` (docs/protocol.md)."""
    index = {int(c): i for i, c in enumerate(classes)}
    labels = sorted(int(c) for c in label_set)
    if not labels:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    stack = np.stack([scores[index[c]].astype(np.float32) if c in index else np.zeros(shape, np.float32)
                      for c in labels])
    label = protocol_label(stack, labels, index=threshold_index, num_thresholds=num_thresholds)
    return label, clamp_scores(stack.max(axis=0))


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
    """Draw the grid for ``records`` (leaderboard order) -> (written files, chosen ids).

    One column pair per sample image and one row per run: the first row holds the image and its
    ground truth, each run's row its pseudo label (over the image) and its map (the top score over
    the image's classes, jet colours). A legend names the class colours present in the grid.
    """
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
    row_names = ["image | ground truth"] + [f"{row_label(r)}\nthreshold {float(r['best_threshold']):.2f}"
                                            for r in recs]
    grid: list[list[np.ndarray | None]] = [[] for _ in row_names]  # rows x (2 * samples) tiles
    shown: set[int] = set()
    for image_id in ids:
        sample = ds[pos[image_id]]
        image = sample.image.astype(np.float32) / 255.0
        gt = sample.mask
        grid[0].append(image)
        grid[0].append(None if gt is None else 0.35 * image + 0.65 * _colorize(gt, palette) / 255.0)
        if gt is not None:
            shown.update(int(v) for v in np.unique(gt))
        for n, r in enumerate(recs, start=1):
            classes, scores = load_cam_file(Path(r["cams_dir"]) / f"{image_id}.npz")
            if scores.shape[1:] != image.shape[:2]:
                grid[n] += [None, None]  # a map of another size is not drawn
                continue
            if r.get("label_source") == "maps" or gt is None:
                label_set = [int(c) for c in classes]
            else:
                present = np.bincount(gt.reshape(-1), minlength=256)
                label_set = [c for c in range(1, len(r["classes"])) if present[c]]
            T = len((r.get("sweep") or {}).get("thresholds") or []) or 100
            j = int(min(max(round(float(r["best_threshold"]) * T), 0), T - 1))
            label, m = pseudo_label(classes, scores, label_set, j, T, image.shape[:2])
            shown.update(int(v) for v in np.unique(label))
            grid[n].append(0.35 * image + 0.65 * _colorize(label, palette) / 255.0)
            grid[n].append(0.35 * image + 0.65 * cmap(m)[..., :3])
    # One mosaic image (fast to draw), each tile fitted into a fixed box, gaps between sample pairs.
    th, tw, gap, pair_gap = 120, 160, 4, 16
    ncol = 2 * len(ids)
    x0s = [c * (tw + gap) + (c // 2) * pair_gap for c in range(ncol)]
    width = x0s[-1] + tw
    height = len(row_names) * (th + gap)
    mosaic = np.ones((height, width, 3), np.float32)
    for ri, tiles in enumerate(grid):
        for ci, pic in enumerate(tiles):
            if pic is not None:
                fitted = _fit(np.clip(pic, 0, 1), th, tw)
                y0 = ri * (th + gap) + (th - fitted.shape[0]) // 2
                x0 = x0s[ci] + (tw - fitted.shape[1]) // 2
                mosaic[y0:y0 + fitted.shape[0], x0:x0 + fitted.shape[1]] = fitted
    dpi = 100
    left, top, bottom = 2.3, 0.75, 0.95  # inches for run names, sample ids, legend
    fw, fh = width / dpi + left + 0.15, height / dpi + top + bottom
    fig = plt.figure(figsize=(fw, fh), dpi=dpi)
    ax = fig.add_axes((left / fw, bottom / fh, width / dpi / fw, height / dpi / fh))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for k, image_id in enumerate(ids):
        xc = (x0s[2 * k] + x0s[2 * k + 1] + tw) / 2
        ax.text(xc, -24, mpl_text(image_id), ha="center", va="bottom", fontsize=9, fontweight="bold")
        ax.text(x0s[2 * k] + tw / 2, -4, "label", ha="center", va="bottom", fontsize=8, color="#444444")
        ax.text(x0s[2 * k + 1] + tw / 2, -4, "map", ha="center", va="bottom", fontsize=8, color="#444444")
    for ri, name in enumerate(row_names):
        wrapped = "\n".join(textwrap.fill(part, 30) for part in name.split("\n"))
        ax.text(-10, ri * (th + gap) + th / 2, mpl_text(wrapped), ha="right", va="center", fontsize=8.5)
    from matplotlib.patches import Patch

    names = ds.classes.names
    handles = [Patch(facecolor=palette[c] / 255.0, edgecolor="#666666", label=mpl_text(names[c] if c < len(names)
                                                                                        else f"class {c}"))
               for c in sorted(v for v in shown if v < 255)]
    if 255 in shown:
        handles.append(Patch(facecolor="white", edgecolor="#666666", label="ignore (255)"))
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(left / fw, 0.02), ncol=min(len(handles), 7),
                   fontsize=8.5, frameon=False, title="classes", title_fontsize=8.5, alignment="left")
    cax = fig.add_axes(((left + width / dpi) / fw - 1.8 / fw, 0.18 / fh, 1.6 / fw, 0.12 / fh))
    cb = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap), cax=cax, orientation="horizontal")
    cb.set_label("map score", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(mpl_text(title), fontsize=10, x=left / fw, ha="left", y=1 - 0.08 / fh, va="top")
    paths = save_figure(fig, stem, dpi=dpi, svg=False, palette=True)  # raster content: PNG only
    plt.close(fig)
    return paths, ids
