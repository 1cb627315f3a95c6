"""``build_leaderboard``: run records -> tables, plots and pages, regenerated from records only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_write_text
from wsss_bench.reports import baselines as _baselines
from wsss_bench.reports import plots as _plots
from wsss_bench.reports.bootstrap import paired_bootstrap
from wsss_bench.reports.descriptors import get_metric
from wsss_bench.reports.grid import qualitative_grid
from wsss_bench.reports.render import (
    PSEUDO_COLUMNS,
    SEG_COLUMNS,
    GroupReport,
    Leaderboard,
    leaderboard_csv,
    per_class_csv,
    published_miou,
    render_html,
    render_json,
    render_latex,
    render_markdown,
)
from wsss_bench.reports.table import (
    Group,
    best_per_class,
    collect_records,
    group_records,
    per_class_frame,
    ranked_frame,
    row_label,
)

FORMATS = ("md", "html", "csv", "tex", "json")
FILE_NAMES = {"md": "README.md", "html": "index.html", "csv": "leaderboard.csv", "tex": "leaderboard.tex",
              "json": "leaderboard.json"}


def _published_cells(group: Group, order: list[int], base: Any) -> list[str]:
    if base is None:
        return [""] * len(order)
    out = []
    for i in order:
        rec = group.records[i]
        name = rec.get("method") or rec.get("segmenter") or ""
        rows = _baselines.matching(base, str(name), group.dataset, group.split, group.kind) if name else []
        cells = [published_miou(r["miou"]) + (f" ({r['variant']})" if r["variant"] else "") for _, r in rows.iterrows()] \
            if len(rows) else []
        out.append("; ".join(cells))
    return out


def _ci_cells(group: Group, order: list[int], samples: int, seed: int) -> list[dict[str, Any] | str | None]:
    top = group.records[order[0]]
    out: list[dict[str, Any] | str | None] = ["top"]
    for i in order[1:]:
        try:
            out.append(paired_bootstrap(group.records[i], top, samples=samples, seed=seed))
        except WsssBenchError as e:
            out.append(f"n/a ({e.message if hasattr(e, 'message') else e})")
    return out


def _group_report(group: Group, sort_key: str, out_dir: Path, base: Any, ci: bool, ci_samples: int,
                  seed: int, samples: int) -> GroupReport:
    sort = get_metric(sort_key)
    frame = ranked_frame(group, sort)
    order = list(frame.attrs["order"])
    keys = list(PSEUDO_COLUMNS if group.kind == "pseudo_label" else SEG_COLUMNS)
    if sort_key not in keys:
        keys.append(sort_key)
    pc = per_class_frame(group, order)
    gr = GroupReport(group=group, frame=frame, per_class=pc, best=best_per_class(pc), metric_keys=keys,
                     published=_published_cells(group, order, base))
    if ci:
        gr.ci = _ci_cells(group, order, ci_samples, seed)
    plot_dir = out_dir / "plots"
    title = group.title
    labels = [row_label(group.records[i]) for i in order]
    if group.kind == "pseudo_label":
        curves = []
        for i in order:
            r = group.records[i]
            sw = r.get("sweep") or {}
            if sw.get("thresholds") and sw.get("miou"):
                curves.append((row_label(r), sw["thresholds"], sw["miou"], r.get("best_threshold")))
        if curves:
            gr.plots["curves"] = _plots.plot_threshold_curves(curves, plot_dir / f"{group.slug}-curves", title)[0]
    gr.plots["errors"] = _plots.plot_error_bars(labels, frame["miou_best"].tolist(), frame["fp_ratio"].tolist(),
                                                frame["fn_ratio"].tolist(), plot_dir / f"{group.slug}-errors",
                                                title)[0]
    gr.plots["heatmap"] = _plots.plot_class_heatmap(pc, plot_dir / f"{group.slug}-heatmap", title)[0]
    if samples > 0 and group.kind == "pseudo_label":
        files, ids = qualitative_grid([group.records[i] for i in order], samples,
                                      plot_dir / f"{group.slug}-samples", title)
        if files:
            gr.plots["grid"] = files[0]
            gr.grid_ids = ids
    return gr


def build_leaderboard(records: list[str | os.PathLike], out_dir: str | os.PathLike,
                      formats: tuple[str, ...] | list[str] = FORMATS, sort: str = "miou_best", ci: bool = False,
                      samples: int = 0, title: str | None = None, command: str | None = None,
                      ci_samples: int = 1000, seed: int = 0) -> list[Path]:
    """Write the leaderboard of ``records`` (record files or folders) into ``out_dir``.

    ``formats``: any of md (``README.md``), html (``index.html``, self-contained), csv
    (``leaderboard.csv`` + ``per_class.csv``), tex (``leaderboard.tex``), json (``leaderboard.json``).
    Plots (PNG + SVG) go to ``out_dir/plots``. ``sort``: a metric key of
    :data:`~wsss_bench.reports.descriptors.METRICS` (direction known per metric). ``ci``: paired
    bootstrap of every row against the top row of its group (``ci_samples`` resamples, ``seed``).
    ``samples``: images in the qualitative grid (runs with saved maps only; 0 = no grid).
    ``command``: the command line shown on the pages as the way to regenerate them.
    Returns the written files.
    """
    fmts = [f.strip().lower() for f in formats if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise WsssBenchError(f"unknown leaderboard format {bad[0] if bad else '(none)'!r} "
                             f"(expected some of {', '.join(FORMATS)})")
    spec = get_metric(sort)
    if samples < 0:
        raise WsssBenchError(f"--samples must be >= 0, got {samples}")
    out = Path(out_dir)
    recs = collect_records(list(records))
    groups = group_records(recs)
    try:
        base = _baselines.load_baselines()
    except WsssBenchError:
        base = None
    if command is None:
        command = "wsss-bench leaderboard " + " ".join(str(p) for p in records) + f" --out {out}" + \
            (f" --sort {sort}" if sort != "miou_best" else "") + (" --ci" if ci else "") + \
            (f" --samples {samples}" if samples else "")
    reports = [_group_report(g, sort, out, base, ci, ci_samples, seed, samples) for g in groups]
    lb = Leaderboard(title=title or "wsss-bench leaderboard", command=command, sort=spec, groups=reports,
                     baselines=base, num_records=len(recs), out_dir=out, ci_samples=ci_samples if ci else 0)
    written: list[Path] = []
    for gr in reports:
        for p in gr.plots.values():
            written.append(p)
            if p.with_suffix(".svg").is_file():
                written.append(p.with_suffix(".svg"))
    for f in fmts:
        path = out / FILE_NAMES[f]
        if f == "md":
            atomic_write_text(path, render_markdown(lb, out))
        elif f == "html":
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
