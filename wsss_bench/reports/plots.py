"""Leaderboard plots (matplotlib, Agg backend), each written as PNG and SVG.

- mIoU versus background threshold, every pseudo-label run on one chart (best point marked);
- stacked IoU / FP ratio / FN ratio bars per run (class means; the three sum to 1, so the bars
  show where each run loses);
- per-class IoU heat map (runs x classes).

Output is deterministic: fixed SVG hash salt, no dates in the metadata.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsss_bench.io import atomic_write_bytes

_PNG_META = {"Software": None}
_SVG_META = {"Date": None, "Creator": None}


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "wsss-bench"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, faster
    return plt


def save_figure(fig: Any, stem: Path, dpi: int = 110, svg: bool = True) -> list[Path]:
    """Write ``stem.png`` (and ``stem.svg``) atomically; return the paths, PNG first."""
    out = []
    kinds = (("png", _PNG_META), ("svg", _SVG_META)) if svg else (("png", _PNG_META),)
    for ext, meta in kinds:
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, metadata=meta, bbox_inches="tight")
        path = stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def _colors(n: int) -> list:
    plt = _mpl()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_threshold_curves(curves: list[tuple[str, list[float], list[float | None], float | None]],
                          stem: Path, title: str) -> list[Path]:
    """``curves``: (label, thresholds, mIoU per threshold (None allowed), best threshold)."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (label, thr, miou, best), color in zip(curves, _colors(len(curves)), strict=True):
        y = np.array([np.nan if v is None else 100.0 * v for v in miou], dtype=float)
        x = np.asarray(thr, dtype=float)
        ax.plot(x, y, label=label, color=color, linewidth=1.6)
        if best is not None and np.isfinite(y).any():
            j = int(np.nanargmax(y))
            ax.plot([x[j]], [y[j]], marker="o", color=color, markersize=5)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_error_bars(labels: list[str], iou: list[float | None], fp: list[float | None],
                    fn: list[float | None], stem: Path, title: str) -> list[Path]:
    """Horizontal stacked bars: mean IoU, mean FP ratio, mean FN ratio per run (percent)."""
    plt = _mpl()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * n + 1.4))
    vals = [np.array([np.nan if v is None else 100.0 * v for v in col], dtype=float) for col in (iou, fp, fn)]
    y = np.arange(n)[::-1]
    left = np.zeros(n)
    for v, name, color in zip(vals, ("IoU", "FP ratio", "FN ratio"), ("#4c9a2a", "#d9822b", "#3b6fb6"),
                              strict=True):
        w = np.nan_to_num(v)
        ax.barh(y, w, left=left, color=color, label=name, height=0.7)
        for yi, li, wi in zip(y, left, w, strict=True):
            if wi >= 6:
                ax.text(li + wi / 2, yi, f"{wi:.1f}", ha="center", va="center", fontsize=7, color="white")
        left = left + w
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of (TP + FP + FN), mean over classes")
    ax.set_title(title, fontsize=10, pad=24)
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_class_heatmap(frame: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """Runs (rows) x classes (columns) IoU in percent; NaN cells left blank, classes that no run
    scored (absent from the split and never predicted) left out."""
    plt = _mpl()
    frame = frame.loc[:, frame.notna().any(axis=0)]
    data = 100.0 * frame.to_numpy(dtype=float)
    nr, nc = data.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * nc + 2.5), 0.42 * nr + 1.8))
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(nc))
    ax.set_xticklabels(list(frame.columns), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(nr))
    ax.set_yticklabels(list(frame.index), fontsize=7)
    if nr * nc <= 900:
        for i in range(nr):
            for j in range(nc):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if data[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="IoU (%)")
    ax.set_title(title, fontsize=10)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths
