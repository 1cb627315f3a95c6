"""Leaderboard plots (matplotlib, Agg backend), each written as PNG and SVG.

- mIoU versus background threshold, every pseudo-label run on one chart (best point marked; one
  colour per method, line style and marker per run);
- stacked IoU / FP ratio / FN ratio bars per run (class means; the three sum to 1, so the bars
  show where each run loses);
- per-class IoU heat map (runs x classes).

Output is deterministic: fixed SVG hash salt, no dates in the metadata. Text from records goes
through :func:`mpl_text`, so ``$`` never starts math text.
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


def save_figure(fig: Any, stem: Path, dpi: int = 110, svg: bool = True, palette: bool = False) -> list[Path]:
    """Write ``stem.png`` (and ``stem.svg``) atomically; return the paths, PNG first.

    ``palette``: store the PNG with an adaptive 256-colour palette (median cut, no dithering), a
    quarter of the size for photo-like figures such as the qualitative grid.
    """
    out = []
    kinds = (("png", _PNG_META), ("svg", _SVG_META)) if svg else (("png", _PNG_META),)
    for ext, meta in kinds:
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, metadata=meta, bbox_inches="tight")
        data = buf.getvalue()
        if ext == "png" and palette:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                               dither=Image.Dither.NONE)
            buf = io.BytesIO()
            q.save(buf, format="PNG", optimize=True)
            data = buf.getvalue()
        path = stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, data)
        out.append(path)
    return out


def mpl_text(text: object) -> str:
    """``text`` as literal matplotlib text: ``$`` escaped, so a run named ``$x^2$`` or ``$\\frac{`` is
    printed as typed instead of being parsed (or failing to parse) as math text."""
    return str(text).replace("$", r"\$")


def method_colors(methods: list[str]) -> dict[str, Any]:
    """One distinct colour per method (tab10 hues; evenly spaced hues beyond ten methods)."""
    plt = _mpl()
    uniq = list(dict.fromkeys(methods))
    if len(uniq) <= 10:
        cmap = plt.get_cmap("tab10")
        return {m: cmap(i) for i, m in enumerate(uniq)}
    cmap = plt.get_cmap("hsv")
    return {m: cmap(i / len(uniq)) for i, m in enumerate(uniq)}


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def curve_styles(methods: list[str], points: int) -> list[dict[str, Any]]:
    """Matplotlib line properties for curves of ``methods`` (one entry per curve, in order).

    Every method gets its own colour; the k-th run of a method gets the k-th line style and
    marker; markers are placed every ``points // 8`` samples starting at an offset that differs
    from curve to curve, so two identical curves still show both markers.
    """
    colors = method_colors(methods)
    step = max(1, points // 8)
    seen: dict[str, int] = {}
    out = []
    for n, m in enumerate(methods):
        k = seen.get(m, 0)
        seen[m] = k + 1
        out.append({"color": colors[m], "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
                    "marker": MARKERS[k % len(MARKERS)], "markevery": ((n * max(1, step // 3)) % step, step)})
    return out


def plot_threshold_curves(curves: list[tuple[str, str, list[float], list[float | None], float | None]],
                          stem: Path, title: str) -> list[Path]:
    """``curves``: (label, method, thresholds, mIoU per threshold (None allowed), best threshold).

    Styles from :func:`curve_styles`: a colour per method, a line style and marker per run.
    """
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    styles = curve_styles([c[1] for c in curves], max((len(c[2]) for c in curves), default=1))
    for n, ((label, _, thr, miou, best), st) in enumerate(zip(curves, styles, strict=True)):
        y = np.array([np.nan if v is None else 100.0 * v for v in miou], dtype=float)
        x = np.asarray(thr, dtype=float)
        ax.plot(x, y, label=mpl_text(label), linewidth=1.6, alpha=0.9, markersize=4, zorder=2 + 0.01 * n, **st)
        if best is not None and np.isfinite(y).any():
            j = int(np.nanargmax(y))
            ax.plot([x[j]], [y[j]], marker="*", color=st["color"], markersize=11, markeredgecolor="black",
                    markeredgewidth=0.5, linestyle="none", zorder=10)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(mpl_text(title) + "\n(star: each run's best threshold)", fontsize=10)
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
    ax.set_yticklabels([mpl_text(t) for t in labels], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of (TP + FP + FN), mean over classes")
    ax.set_title(mpl_text(title), fontsize=10, pad=24)
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
    ax.set_xticklabels([mpl_text(c) for c in frame.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(nr))
    ax.set_yticklabels([mpl_text(t) for t in frame.index], fontsize=7)
    if nr * nc <= 900:
        for i in range(nr):
            for j in range(nc):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if data[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="IoU (%)")
    ax.set_title(mpl_text(title), fontsize=10)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths
