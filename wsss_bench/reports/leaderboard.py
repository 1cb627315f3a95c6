"""``build_leaderboard``: run records -> tables, plots and pages, regenerated from records only."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_write_text
from wsss_bench.reports import baselines as _baselines
from wsss_bench.reports import plots as _plots
from wsss_bench.reports.bootstrap import paired_bootstrap
from wsss_bench.reports.descriptors import get_metric
from wsss_bench.reports.names import display_name
from wsss_bench.reports.render import (
    PSEUDO_COLUMNS,
    SEG_COLUMNS,
    GroupReport,
    Leaderboard,
    Training,
    leaderboard_csv,
    per_class_csv,
    published_miou,
    render_json,
    render_latex,
    render_markdown,
)
from wsss_bench.reports.table import (
    Group,
    ReportWarning,
    best_per_class,
    collect,
    group_records,
    method_id,
    per_class_frame,
    pseudo_miou,
    ranked_frame,
    row_label,
)

FORMATS = ("md", "html", "csv", "tex", "json")
#: The formats whose pages link the plots: with none of them asked for, no plot is drawn (no matplotlib).
PLOT_FORMATS = ("md", "html", "json")
FILE_NAMES = {"md": "README.md", "html": "index.html", "csv": "leaderboard.csv", "tex": "leaderboard.tex",
              "json": "leaderboard.json"}


def _published(base: Any, method: str, dataset: str, split: str | None, stage: str) -> list[str]:
    """Published mIoUs of ``method`` (``split`` None: any split, which is then named)."""
    if base is None or not method:
        return []
    if split is None:
        key = method.lower().replace("_", "-")
        m = base["method"].str.lower().str.replace("_", "-") == key
        rows = base[m & (base["dataset"] == dataset) & (base["stage"] == stage) & base["miou"].notna()]
    else:
        rows = _baselines.matching(base, method, dataset, split, stage)
    out = []
    for _, r in rows.iterrows():
        extra = [x for x in (r["variant"], r["split"] if split is None else "") if x]
        out.append(published_miou(r["miou"]) + (f" ({', '.join(extra)})" if extra else ""))
    return out


def _published_cells(group: Group, order: list[int], base: Any) -> list[str]:
    return ["; ".join(_published(base, method_id(group.records[i]), group.dataset, group.split, group.kind))
            for i in order]


def _ci_cells(group: Group, order: list[int], samples: int, seed: int) -> list[dict[str, Any] | str | None]:
    top = group.records[order[0]]
    out: list[dict[str, Any] | str | None] = ["top"]
    for i in order[1:]:
        try:
            out.append(paired_bootstrap(group.records[i], top, samples=samples, seed=seed))
        except WsssBenchError as e:
            out.append(f"n/a ({e.message})")
    return out


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * float(v):.1f}"


def _pipeline_frame(group: Group, order: list[int], base: Any) -> pd.DataFrame | None:
    """Per trained segmenter: its pseudo labels' record and mIoU, the recipe, the final mIoU, and
    the published pseudo-label and final numbers of the method."""
    rows = []
    for i in order:
        r = group.records[i]
        pipe = r.get("pipeline")
        if not isinstance(pipe, dict):
            continue
        train = r.get("training") if isinstance(r.get("training"), dict) else {}
        method = method_id(r)
        thr = pipe.get("threshold")
        rows.append({
            "method": display_name(method),
            "pseudo-label record": str(pipe.get("pseudo_record") or "-"),
            "pseudo-label mIoU (%)": _pct(pseudo_miou(pipe)),
            "threshold": "-" if thr is None else f"{float(thr):.2f}",
            "recipe": str(pipe.get("recipe") or "-"),
            "segmenter": display_name(str(pipe.get("segmenter") or r.get("segmenter") or "")) or "-",
            "final mIoU (%)": _pct((r.get("metrics") or {}).get("miou")),
            "published pseudo-label mIoU (%)": "; ".join(_published(base, method, group.dataset, None,
                                                                    "pseudo_label")) or "-",
            "published final mIoU (%)": "; ".join(_published(base, method, group.dataset, group.split,
                                                             "segmentation")) or "-",
            "iterations": "-" if train.get("iterations") is None else str(train["iterations"]),
            "training time (s)": "-" if train.get("seconds") is None else f"{float(train['seconds']):.0f}",
        })
    return pd.DataFrame(rows) if rows else None


def _training(group: Group, order: list[int]) -> list[Training]:
    out = []
    for i in order:
        r = group.records[i]
        t = r.get("training")
        if not isinstance(t, dict):
            continue
        plot = Path(t["loss_plot"]) if t.get("loss_plot") else None
        log = Path(t["log"]) if t.get("log") else None
        if plot is None and log is None:
            continue
        out.append(Training(row_label(r), plot, log, t.get("iterations"), t.get("seconds")))
    return out


def _group_report(group: Group, sort_key: str, out_dir: Path, base: Any, ci: bool, ci_samples: int,
                  seed: int, samples: int, plots: bool = True) -> GroupReport:
    sort = get_metric(sort_key)
    frame = ranked_frame(group, sort)
    order = list(frame.attrs["order"])
    keys = list(PSEUDO_COLUMNS if group.kind == "pseudo_label" else SEG_COLUMNS)
    keys = [k for k in keys if k in ("miou_best", sort_key) or frame[k].notna().any()]
    if sort_key not in keys:
        keys.append(sort_key)
    pc = per_class_frame(group, order)
    gr = GroupReport(group=group, frame=frame, per_class=pc, best=best_per_class(pc), metric_keys=keys,
                     published=_published_cells(group, order, base))
    if group.kind == "segmentation":
        gr.pipeline = _pipeline_frame(group, order, base)
        gr.training = _training(group, order)
    if ci:
        gr.ci = _ci_cells(group, order, ci_samples, seed)
    if not plots:
        return gr
    plot_dir = out_dir / "plots"
    title = f"{group.title}, {group.image_set}"
    labels = [row_label(group.records[i]) for i in order]
    if group.kind == "pseudo_label":
        curves = []
        for i in order:
            r = group.records[i]
            sw = r.get("sweep") or {}
            if sw.get("thresholds") and sw.get("miou"):
                curves.append((row_label(r), method_id(r), sw["thresholds"], sw["miou"], r.get("best_threshold")))
        if curves:
            gr.plots["curves"] = _plots.plot_threshold_curves(curves, plot_dir / f"{group.slug}-curves", title)[0]
    gr.plots["errors"] = _plots.plot_error_bars(labels, frame["miou_best"].tolist(), frame["fp_ratio"].tolist(),
                                                frame["fn_ratio"].tolist(), plot_dir / f"{group.slug}-errors",
                                                title)[0]
    gr.plots["heatmap"] = _plots.plot_class_heatmap(pc, plot_dir / f"{group.slug}-heatmap", title)[0]
    if samples > 0 and group.kind == "pseudo_label":
        from wsss_bench.reports.grid import qualitative_grid

        try:
            files, ids = qualitative_grid([group.records[i] for i in order], samples,
                                          plot_dir / f"{group.slug}-samples", title)
        except WsssBenchError as e:  # data or maps moved away since the runs: the rest still renders
            files, ids = [], []
            gr.notes.append(f"No qualitative grid: {e}")
            warnings.warn(f"no qualitative grid for {group.title}: {e}", ReportWarning, stacklevel=2)
        if files:
            gr.plots["grid"] = files[0]
            gr.grid_ids = ids
    return gr


def build_leaderboard(records: list[str | os.PathLike], out_dir: str | os.PathLike,
                      formats: tuple[str, ...] | list[str] = FORMATS, sort: str = "miou_best", ci: bool = False,
                      samples: int = 0, title: str | None = None, command: str | None = None,
                      ci_samples: int = 1000, seed: int = 0, plots: bool = True) -> list[Path]:
    """Write the leaderboard of ``records`` (record files or folders) into ``out_dir``.

    ``formats``: any of md (``README.md``), html (``index.html``, self-contained), csv
    (``leaderboard.csv`` + ``per_class.csv``), tex (``leaderboard.tex``), json (``leaderboard.json``).
    Plots (PNG + SVG) go to ``out_dir/plots``. ``sort``: a metric key of
    :data:`~wsss_bench.reports.descriptors.METRICS` (direction known per metric). ``ci``: paired
    bootstrap of every row against the top row of its group (``ci_samples`` resamples, ``seed``).
    ``samples``: images in the qualitative grid (runs with saved maps only; 0 = no grid).
    ``command``: the command line shown on the pages as the way to regenerate them. ``plots``:
    False skips every figure (tables only, fast); figures are drawn only when a format that links
    them is written (:data:`PLOT_FORMATS`). Records are ranked together only when protocol version, dataset, split, kind and fingerprint
    match. Malformed records in a folder are skipped with a warning naming the file (and listed on
    the pages). Returns the written files.
    """
    fmts = [f.strip().lower() for f in formats if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise WsssBenchError(f"unknown leaderboard format {bad[0] if bad else '(none)'!r} "
                             f"(expected some of {', '.join(FORMATS)})")
    spec = get_metric(sort)
    plots = plots and any(f in PLOT_FORMATS for f in fmts)
    if samples < 0:
        raise WsssBenchError(f"grid images (samples) must be >= 0, got {samples}")
    if ci and ci_samples < 1:
        raise WsssBenchError(f"bootstrap resamples (ci_samples) must be >= 1, got {ci_samples}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WsssBenchError("the output folder is a file", out)
    found = collect(list(records))
    recs = found.records
    groups = group_records(recs)
    try:
        base = _baselines.load_baselines()
    except WsssBenchError:
        base = None
    if command is None:
        command = "wsss-bench leaderboard " + " ".join(str(p) for p in records) + f" --out {out}" + \
            (f" --sort {sort}" if sort != "miou_best" else "") + (" --ci" if ci else "") + \
            (f" --grid-images {samples}" if samples else "")
    try:
        reports = [_group_report(g, sort, out, base, ci, ci_samples, seed, samples, plots) for g in groups]
        lb = Leaderboard(title=title or "wsss-bench leaderboard", command=command, sort=spec, groups=reports,
                         baselines=base, num_records=len(recs), out_dir=out, ci_samples=ci_samples if ci else 0,
                         skipped=found.skipped)
        return _write_pages(lb, fmts)
    except OSError as e:  # a read-only or full output folder: one line naming the file
        raise WsssBenchError(f"cannot write the leaderboard ({e.strerror or e})", e.filename or out) from None


def _write_pages(lb: Leaderboard, fmts: list[str]) -> list[Path]:
    out = lb.out_dir
    written: list[Path] = []
    for gr in lb.groups:
        for p in gr.plots.values():
            written.append(p)
            if p.with_suffix(".svg").is_file():
                written.append(p.with_suffix(".svg"))
    for f in fmts:
        path = out / FILE_NAMES[f]
        if f == "md":
            atomic_write_text(path, render_markdown(lb, out))
        elif f == "html":
            from wsss_bench.reports.html import render_html

            atomic_write_text(path, render_html(lb))
        elif f == "csv":
            atomic_write_text(path, leaderboard_csv(lb))
            atomic_write_text(out / "per_class.csv", per_class_csv(lb))
            written.append(out / "per_class.csv")
        elif f == "tex":
            atomic_write_text(path, render_latex(lb))
        elif f == "json":
            atomic_write_text(path, render_json(lb, out))
        written.append(path)
    return written
