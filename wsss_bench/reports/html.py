"""The self-contained HTML leaderboard: a jinja2 template (autoescape) around tables that pandas'
Styler writes (every cell and header escaped), plots embedded as PNG data URLs.

The page's only script sorts tables by a click on a header; the column metadata it needs (numeric
or not, which direction is better) travels as a JSON attribute on each table's wrapper.
"""

from __future__ import annotations

import base64
import functools
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from wsss_bench.reports.render import (
    DOCS,
    GROUP_NOTE,
    PIPELINE_NOTE,
    PUBLISHED_NOTE,
    GroupReport,
    Leaderboard,
    best_rows,
    cell,
    columns,
    legend_text,
    published_miou,
    transpose_per_class,
)

PLOT_CAPTIONS = (("curves", "mIoU versus background threshold (one colour per method; star: best threshold)"),
                 ("errors", "IoU / FP / FN share per run (mean over classes)"),
                 ("grid", "Qualitative samples: pseudo label and map of each run at its best threshold"))


@functools.lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("wsss_bench.reports", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def styled(df: pd.DataFrame, classes: pd.DataFrame | None, table_class: str, uuid: str,
           gradient: pd.DataFrame | None = None) -> Markup:
    """``df`` (display strings) as an HTML table by pandas' Styler: cells and headers escaped,
    ``classes`` (our own constants) on the cells, an optional background shade per cell."""
    sty = df.style.hide(axis="index").format(escape="html").format_index(escape="html", axis=1)
    if classes is not None:
        sty = sty.set_td_classes(classes)
    if gradient is not None:
        sty = sty.apply(lambda _: gradient, axis=None)
    sty = sty.set_table_attributes(f'class="{table_class}"').set_uuid(uuid)
    return Markup(sty.to_html())  # noqa: S704 - Styler escaped every cell and header above


def _shade(v: float) -> str:
    """A light green whose strength follows an IoU in [0, 1] (text stays dark and readable)."""
    if math.isnan(v):
        return ""
    a = max(0.0, min(1.0, v)) * 0.55
    return f"background-color: rgba(76, 154, 42, {a:.2f})"


def _main_table(gr: GroupReport, ci: bool, uuid: str) -> tuple[Markup, list[dict[str, Any]]]:
    cols = columns(gr, ci)
    best = {k: best_rows(gr, k) for k in gr.metric_keys}
    text, cls = [], []
    for i in range(len(gr.frame)):
        trow, crow = [], []
        for c in cols:
            t = cell(gr, i, c.key, compact=True)[0]
            trow.append(t)
            k = ["num"] if c.numeric else []
            if c.key in ("ci", "notes"):
                k.append(c.key)
            if c.key in best and i in best[c.key] and t != "-":
                k.append("best")
            crow.append(" ".join(k))
        text.append(trow)
        cls.append(crow)
    headers = [c.header for c in cols]
    df = pd.DataFrame(text, columns=headers)
    meta = [{"key": c.key, "numeric": c.numeric, "better": c.better, "description": c.description} for c in cols]
    return styled(df, pd.DataFrame(cls, columns=headers), "sortable leaderboard", uuid), meta


def _per_class_table(gr: GroupReport, uuid: str) -> tuple[Markup, list[dict[str, Any]]]:
    pc, best = gr.per_class, gr.best
    first = "run"
    if transpose_per_class(gr):
        pc, best, first = pc.T, best.T, "class"
    text = [[str(label)] + ["-" if math.isnan(v) else f"{100 * v:.1f}" for v in pc.iloc[r].to_numpy(dtype=float)]
            for r, label in enumerate(pc.index)]
    headers = [first] + [str(c) for c in pc.columns]
    if len(set(headers)) != len(headers):  # duplicate class names: number the columns
        headers = [first] + [f"{c} ({j + 1})" for j, c in enumerate(pc.columns)]
    cls = [[""] + ["num best" if best.iat[r, c] else "num" for c in range(pc.shape[1])] for r in range(pc.shape[0])]
    shade = [[""] + [_shade(float(v)) for v in pc.iloc[r].to_numpy(dtype=float)] for r in range(pc.shape[0])]
    df = pd.DataFrame(text, columns=headers)
    meta = [{"key": first, "numeric": False, "better": "none", "description": ""}] + \
        [{"key": str(c), "numeric": True, "better": "high", "description": "IoU (%)"} for c in pc.columns]
    return (styled(df, pd.DataFrame(cls, columns=headers), "sortable perclass", uuid,
                   gradient=pd.DataFrame(shade, columns=headers)), meta)


def _pipeline_table(pf: pd.DataFrame, uuid: str) -> tuple[Markup, list[dict[str, Any]]]:
    df = pf.astype(str)
    numeric = [c.endswith("(%)") or c in ("threshold", "iterations", "training time (s)") for c in df.columns]
    cls = pd.DataFrame([["num" if n else "" for n in numeric]] * len(df), columns=df.columns)
    meta = [{"key": c, "numeric": n, "better": "high" if c.endswith("mIoU (%)") else "none", "description": ""}
            for c, n in zip(df.columns, numeric, strict=True)]
    return styled(df, cls, "sortable pipeline", uuid), meta


def _published_table(base: pd.DataFrame) -> tuple[Markup, list[dict[str, Any]]]:
    from wsss_bench.reports.names import display_name

    heads = ["method", "variant", "backbone", "dataset", "split", "stage", "mIoU (%)", "includes", "source"]
    rows, links = [], []
    for n, (_, b) in enumerate(base.iterrows()):
        rows.append([display_name(str(b["method"])) if b["method"] else "", b["variant"], b["backbone"],
                     b["dataset"], b["split"], b["stage"], published_miou(b["miou"]), b["includes"], n])
        links.append((str(b["source"]), str(b["source_url"])))

    def source(n: int) -> str:  # runs after Styler's escaping, so it escapes the text and URL itself
        text, url = links[n]
        if url.startswith(("https://", "http://")):
            return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'
        return html.escape(text)

    df = pd.DataFrame(rows, columns=heads)
    sty = df.style.hide(axis="index").format(escape="html").format({"source": source}) \
        .format_index(escape="html", axis=1).set_table_attributes('class="sortable published"').set_uuid("pub")
    cls = pd.DataFrame([["", "", "", "", "", "", "num", "", ""]] * len(df), columns=heads)
    sty = sty.set_td_classes(cls)
    meta = [{"key": h, "numeric": h.startswith("mIoU"), "better": "none", "description": ""} for h in heads]
    return Markup(sty.to_html()), meta  # noqa: S704 - escaped by Styler and by source()


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s / 3600:.1f} h of training" if s >= 3600 else f"{s / 60:.1f} min of training" if s >= 60 \
        else f"{s:.0f} s of training"


def render_html(lb: Leaderboard) -> str:
    ci = lb.ci_samples > 0
    groups = []
    for n, gr in enumerate(lb.groups):
        table, meta = _main_table(gr, ci, f"g{n}")
        per_class, pc_meta = _per_class_table(gr, f"g{n}pc")
        g: dict[str, Any] = {
            "id": gr.group.slug, "title": gr.group.title, "caption": gr.caption, "sibling_note": gr.sibling_note,
            "table": table, "columns": meta, "legend": legend_text(gr, ci, lb.ci_samples),
            "per_class": per_class, "per_class_columns": pc_meta, "grid_ids": gr.grid_ids, "notes": list(gr.notes),
            "pipeline": None, "pipeline_columns": [], "training": [],
            "plots": [{"caption": cap, "src": _data_url(gr.plots[name])} for name, cap in PLOT_CAPTIONS
                      if name in gr.plots],
        }
        if gr.pipeline is not None:
            g["pipeline"], g["pipeline_columns"] = _pipeline_table(gr.pipeline, f"g{n}pl")
        for t in gr.training:
            if t.loss_plot is not None and t.loss_plot.is_file():
                g["training"].append({"label": t.label, "src": _data_url(t.loss_plot), "iterations": t.iterations,
                                      "seconds": _seconds(t.seconds), "log": t.log.name if t.log else None})
            elif t.loss_plot is not None:
                g["notes"].append(f"Loss plot of {t.label} not found: {t.loss_plot}")
        groups.append(g)
    published, pub_meta = _published_table(lb.baselines) if lb.baselines is not None else (None, [])
    docs = {k: lb.doc_link(k) for k in DOCS}
    return _env().get_template("leaderboard.html.j2").render(
        lb=lb, groups=groups, docs=docs, doc_names=DOCS, group_note=GROUP_NOTE, published_note=PUBLISHED_NOTE,
        pipeline_note=PIPELINE_NOTE, published=published, published_columns=pub_meta)
