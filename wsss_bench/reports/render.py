"""Renderers: one leaderboard model -> Markdown, self-contained HTML, CSV, LaTeX (booktabs), JSON.

Every string from a record is escaped for the target format: ``html.escape`` (text and
attributes) for HTML, entity/backslash escapes for Markdown, the LaTeX specials for LaTeX.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsss_bench.reports.descriptors import METRICS, MetricSpec
from wsss_bench.reports.table import Group

PSEUDO_COLUMNS = ("miou_best", "best_threshold", "miou_calibrated", "miou_native", "precision", "recall",
                  "fp_ratio", "fn_ratio", "images_per_second")
SEG_COLUMNS = ("miou_best", "precision", "recall", "fp_ratio", "fn_ratio", "pixel_accuracy", "images_per_second")
TEXT_BEFORE = ("method", "variant", "backbone", "settings")


@dataclass
class GroupReport:
    """Everything a renderer needs for one group (records that are ranked together)."""

    group: Group
    frame: pd.DataFrame  # ranked rows (record_row fields + rank)
    per_class: pd.DataFrame  # labels x classes, fractions
    best: pd.DataFrame  # bool, best per class
    metric_keys: list[str]
    published: list[str]  # per row, published numbers of the same method/dataset/split/stage
    ci: list[dict[str, Any] | str | None] = field(default_factory=list)  # per row: bootstrap vs top
    plots: dict[str, Path] = field(default_factory=dict)  # name -> PNG path (SVG beside it)
    grid_ids: list[str] = field(default_factory=list)

    def spec(self, key: str) -> MetricSpec:
        s = METRICS[key]
        if key == "miou_best" and self.group.kind == "segmentation":
            return MetricSpec(s.key, "mIoU", s.higher_is_better, s.percent, s.digits, "mIoU of the masks")
        return s


@dataclass
class Leaderboard:
    title: str
    command: str
    sort: MetricSpec
    groups: list[GroupReport]
    baselines: pd.DataFrame | None
    num_records: int
    out_dir: Path
    ci_samples: int = 0

    @property
    def protocol_versions(self) -> list[str]:
        return sorted({str(g.group.protocol_version) for g in self.groups})


GROUP_NOTE = ("Records are ranked only against records of the same protocol version, dataset, split and "
              "kind; each group has its own table.")
PUBLISHED_NOTE = ("Published numbers are what the papers and repositories report, under their own evaluation "
                  "code and refinements (see \u201cincludes\u201d). They are not measured here and never ranked.")


def published_miou(v: float) -> str:
    """A published mIoU as the sources print it: one decimal, or two where the source gives two."""
    if math.isnan(v):
        return "none stated"
    return f"{v:.1f}" if abs(round(v * 10) - v * 10) < 1e-9 else f"{v:.2f}"


def _ci_text(ci: dict[str, Any] | str | None) -> str:
    if ci is None:
        return ""
    if isinstance(ci, str):
        return ci
    return (f"{100 * ci['difference']:+.1f} [{100 * ci['ci_low']:+.1f}, {100 * ci['ci_high']:+.1f}] "
            f"(better in {100 * ci['share_a_better']:.0f}%)")


def _fmt_cell(gr: GroupReport, key: str, value: Any) -> str:
    if key in METRICS:
        return gr.spec(key).format(value)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _best_rows(gr: GroupReport, key: str) -> set[int]:
    spec = gr.spec(key)
    if spec.higher_is_better is None:
        return set()
    vals = [v for v in gr.frame[key].tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return set()
    best = max(vals) if spec.higher_is_better else min(vals)
    return {i for i, v in enumerate(gr.frame[key].tolist()) if v == best}


def _columns(gr: GroupReport, ci: bool) -> list[tuple[str, str]]:
    """(key, header) in display order."""
    cols = [("rank", "#")] + [(k, k) for k in TEXT_BEFORE]
    cols += [(k, gr.spec(k).header) for k in gr.metric_keys]
    cols += [("device", "device"), ("published", "published")]
    if ci:
        cols.append(("ci", "\u0394 mIoU vs #1 [95% CI]"))
    cols.append(("notes", "notes"))
    return cols


def _cell_values(gr: GroupReport, i: int, key: str) -> tuple[str, Any]:
    """(display text, sort value) of row ``i``, column ``key``."""
    row = gr.frame.iloc[i]
    if key == "published":
        return gr.published[i], None
    if key == "ci":
        c = gr.ci[i] if i < len(gr.ci) else None
        return _ci_text(c), (c["difference"] if isinstance(c, dict) else None)
    v = row[key]
    if isinstance(v, float) and math.isnan(v):
        v = None
    return _fmt_cell(gr, key, v), v


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def md_escape(text: Any) -> str:
    s = str(text).replace("\r", " ").replace("\n", " ")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]|#":
        s = s.replace(ch, "\\" + ch)
    return s


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join({"r": "---:", "l": ":---", "c": ":---:"}[a] for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(lb: Leaderboard, rel: Path) -> str:
    lines = [f"# {md_escape(lb.title)}", "",
             "> Generated by wsss-bench from run records; do not edit by hand. Regenerate with:", ">",
             f"> `{lb.command.replace('`', '')}`", "",
             f"Protocol version {', '.join(lb.protocol_versions)} (PROTOCOL.md) \u00b7 {lb.num_records} records \u00b7 "
             f"sorted by {md_escape(lb.sort.display)} "
             f"({'higher' if lb.sort.higher_is_better else 'lower' if lb.sort.higher_is_better is False else 'ascending'}"
             f"{' is better' if lb.sort.higher_is_better is not None else ''}). "
             f"{GROUP_NOTE}", ""]
    ci = lb.ci_samples > 0
    for gr in lb.groups:
        lines += [f"## {md_escape(gr.group.title)}", ""]
        cols = _columns(gr, ci)
        best = {k: _best_rows(gr, k) for k in gr.metric_keys}
        rows = []
        for i in range(len(gr.frame)):
            cells = []
            for k, _ in cols:
                text = md_escape(_cell_values(gr, i, k)[0])
                if k in best and i in best[k] and text != "-":
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        align = ["r" if (k in METRICS or k == "rank") else "l" for k, _ in cols]
        lines += _md_table([md_escape(h) for _, h in cols], rows, align)
        lines += ["", _legend_text(gr, ci, lb.ci_samples), ""]
        lines += ["### Per-class IoU (%)", "", "Bold: the best run for that class.", ""]
        pc = gr.per_class
        rows = []
        for r, label in enumerate(pc.index):
            cells = [md_escape(label)]
            for c in range(pc.shape[1]):
                v = pc.iat[r, c]
                t = "-" if math.isnan(v) else f"{100 * v:.1f}"
                cells.append(f"**{t}**" if gr.best.iat[r, c] else t)
            rows.append(cells)
        lines += _md_table(["run"] + [md_escape(c) for c in pc.columns], rows, ["l"] + ["r"] * pc.shape[1])
        lines.append("")
        for name, caption in (("curves", "mIoU versus background threshold"),
                              ("errors", "IoU / FP / FN share per run"), ("heatmap", "per-class IoU"),
                              ("grid", "qualitative samples")):
            if name in gr.plots:
                p = gr.plots[name]
                link = (p.relative_to(rel) if p.is_relative_to(rel) else p).as_posix()
                extra = f" (SVG: [{name}.svg]({link[:-4]}.svg))" if name != "grid" else ""
                lines += [f"![{caption}]({link}){extra}", ""]
        if gr.grid_ids:
            lines += [f"Samples: {', '.join(md_escape(i) for i in gr.grid_ids)} (chosen by SHA-1 of the id).", ""]
    lines += _published_md(lb)
    return "\n".join(lines).rstrip() + "\n"


def _legend_text(gr: GroupReport, ci: bool, samples: int) -> str:
    parts = [f"{gr.spec(k).header}: {gr.spec(k).description}" for k in gr.metric_keys]
    text = "Columns: " + "; ".join(parts) + ". Bold: best in column. \u2191 higher is better, \u2193 lower is better."
    if ci:
        text += (f" \u0394: paired bootstrap over images against the top row ({samples} resamples), "
                 "points of mIoU, with the share of resamples in which the row beats the top one.")
    return text


def _published_md(lb: Leaderboard) -> list[str]:
    lines = ["## Published numbers (not measured here; not ranked)", "", PUBLISHED_NOTE, ""]
    if lb.baselines is None:
        return lines + ["The baselines file was not found.", ""]
    rows = []
    for _, b in lb.baselines.iterrows():
        miou = published_miou(b["miou"])
        rows.append([md_escape(x) for x in (b["method"], b["variant"], b["backbone"], b["dataset"], b["split"],
                                            b["stage"], miou, b["includes"])]
                    + [f"[{md_escape(b['source'])}]({b['source_url']})" if b["source_url"] else md_escape(b["source"])])
    lines += _md_table(["method", "variant", "backbone", "dataset", "split", "stage", "mIoU (%)", "includes",
                        "source"], rows, ["l"] * 6 + ["r", "l", "l"])
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1500px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccd}h3{font-size:1em}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #e3e6ee;white-space:nowrap}
th{background:#f3f5f9;text-align:left;position:sticky;top:0}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e4e9f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.best{font-weight:700}
.meta,.note,.legend{color:#4a5263;font-size:13px;max-width:1100px}
code{background:#f3f5f9;padding:1px 4px;border-radius:3px}
.plots img{max-width:100%;margin:6px 0;border:1px solid #e3e6ee}
.wrap{overflow-x:auto}.published td,.published th{font-size:12px}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
"""

# Sorting: each header cell says whether its column is numeric and which direction is better.
_JS = """
(function(){
  function key(td, numeric){
    if(!numeric){return (td.textContent||'').toLowerCase();}
    var v = td.getAttribute('data-value');
    return (v === null || v === '') ? null : parseFloat(v);
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function(th, col){
      th.addEventListener('click', function(){
        var numeric = th.getAttribute('data-type') === 'num';
        var better = th.getAttribute('data-better');
        var asc = th.classList.contains('sorted-asc') ? false :
                  th.classList.contains('sorted-desc') ? true : (better === 'low' || !numeric || better === 'none');
        heads.forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
        th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
          if(x === null && y === null){return 0;} if(x === null){return 1;} if(y === null){return -1;}
          var r = x < y ? -1 : x > y ? 1 : 0;
          return asc ? r : -r;
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def render_html(lb: Leaderboard) -> str:
    ci = lb.ci_samples > 0
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<link rel="icon" href="data:,">',
           f"<title>{_e(lb.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(lb.title)}</h1>",
           f'<p class="meta">Protocol version {_e(", ".join(lb.protocol_versions))} \u00b7 {lb.num_records} records '
           f"\u00b7 sorted by {_e(lb.sort.header)}. Generated by wsss-bench from run records; do not edit by hand. "
           f"Regenerate with: <code>{_e(lb.command)}</code></p>",
           f'<p class="note">{_e(GROUP_NOTE)} Click a column header to sort.</p>']
    for gr in lb.groups:
        out.append(f'<section id="{_e(gr.group.slug)}"><h2>{_e(gr.group.title)}</h2>')
        cols = _columns(gr, ci)
        best = {k: _best_rows(gr, k) for k in gr.metric_keys}
        out.append('<div class="wrap"><table class="sortable leaderboard"><thead><tr>')
        for k, h in cols:
            numeric = k in METRICS or k in ("rank", "ci")
            better = ("high" if k == "ci" else "low" if k == "rank" else
                      {True: "high", False: "low", None: "none"}[gr.spec(k).higher_is_better] if k in METRICS else "none")
            desc = gr.spec(k).description if k in METRICS else ""
            out.append(f'<th data-key="{_e(k)}" data-type="{"num" if numeric else "text"}" data-better="{better}"'
                       f' title="{_e(desc)}">{_e(h)}</th>')
        out.append("</tr></thead><tbody>")
        for i in range(len(gr.frame)):
            out.append("<tr>")
            for k, _ in cols:
                text, value = _cell_values(gr, i, k)
                numeric = k in METRICS or k in ("rank", "ci")
                cls = ["num"] if numeric else []
                if k in best and i in best[k] and text != "-":
                    cls.append("best")
                attr = f' class="{" ".join(cls)}"' if cls else ""
                if numeric:
                    sv = "" if value is None else repr(float(value))
                    attr += f' data-value="{_e(sv)}"'
                out.append(f"<td{attr}>{_e(text)}</td>")
            out.append("</tr>")
        out.append("</tbody></table></div>")
        out.append(f'<p class="legend">{_e(_legend_text(gr, ci, lb.ci_samples))}</p>')
        out.append("<h3>Per-class IoU (%)</h3><p class=\"legend\">Bold: the best run for that class.</p>")
        pc = gr.per_class
        out.append('<div class="wrap"><table class="sortable perclass"><thead><tr>'
                   '<th data-type="text" data-better="none">run</th>')
        out += [f'<th data-type="num" data-better="high">{_e(c)}</th>' for c in pc.columns]
        out.append("</tr></thead><tbody>")
        for r, label in enumerate(pc.index):
            out.append(f"<tr><td>{_e(label)}</td>")
            for c in range(pc.shape[1]):
                v = pc.iat[r, c]
                t = "-" if math.isnan(v) else f"{100 * v:.1f}"
                cls = "num best" if gr.best.iat[r, c] else "num"
                out.append(f'<td class="{cls}" data-value="{"" if math.isnan(v) else repr(float(v))}">{_e(t)}</td>')
            out.append("</tr>")
        out.append("</tbody></table></div>")
        out.append('<div class="plots">')
        for name, caption in (("curves", "mIoU versus background threshold"), ("errors", "IoU / FP / FN share"),
                              ("heatmap", "Per-class IoU"), ("grid", "Qualitative samples")):
            if name in gr.plots:
                out.append(f"<h3>{_e(caption)}</h3>" + _img_tag(gr.plots[name], caption))
        if gr.grid_ids:
            out.append(f'<p class="legend">Samples: {_e(", ".join(gr.grid_ids))} (chosen by SHA-1 of the id).</p>')
        out.append("</div></section>")
    out += _published_html(lb)
    out.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(out) + "\n"


def _published_html(lb: Leaderboard) -> list[str]:
    out = ['<section id="published"><h2>Published numbers (not measured here; not ranked)</h2>',
           f'<p class="note">{_e(PUBLISHED_NOTE)}</p>']
    if lb.baselines is None:
        return out + ["<p>The baselines file was not found.</p></section>"]
    heads = ("method", "variant", "backbone", "dataset", "split", "stage", "mIoU (%)", "includes", "source")
    out.append('<div class="wrap"><table class="sortable published"><thead><tr>')
    out += [f'<th data-type="{"num" if h.startswith("mIoU") else "text"}" data-better="none">{_e(h)}</th>'
            for h in heads]
    out.append("</tr></thead><tbody>")
    for _, b in lb.baselines.iterrows():
        miou = published_miou(b["miou"])
        cells = [f"<td>{_e(b[k])}</td>" for k in ("method", "variant", "backbone", "dataset", "split", "stage")]
        cells.append(f'<td class="num" data-value="{"" if math.isnan(b["miou"]) else b["miou"]}">{_e(miou)}</td>')
        cells.append(f"<td>{_e(b['includes'])}</td>")
        src = _e(b["source"])
        if str(b["source_url"]).startswith(("https://", "http://")):
            src = f'<a href="{_e(b["source_url"])}">{src}</a>'
        cells.append(f"<td>{src}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div></section>")
    return out


# ---------------------------------------------------------------------------------------------
# CSV, LaTeX, JSON
# ---------------------------------------------------------------------------------------------


def leaderboard_csv(lb: Leaderboard) -> str:
    frames = []
    for gr in lb.groups:
        df = gr.frame.copy()
        g = gr.group
        df.insert(0, "kind", g.kind)
        df.insert(0, "split", g.split)
        df.insert(0, "dataset", g.dataset)
        df.insert(0, "protocol_version", g.protocol_version)
        df["published"] = gr.published
        if lb.ci_samples > 0:
            for k in ("difference", "ci_low", "ci_high", "share_a_better"):
                df[f"vs_top_{k}"] = [c.get(k) if isinstance(c, dict) else None for c in gr.ci]
        frames.append(df)
    return pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n")


def per_class_csv(lb: Leaderboard) -> str:
    frames = []
    for gr in lb.groups:
        df = gr.per_class.copy()
        df.insert(0, "run", list(df.index))
        df.insert(0, "rank", list(gr.frame["rank"]))
        for k, v in reversed(list(zip(("protocol_version", "dataset", "split", "kind"), gr.group.key, strict=True))):
            df.insert(0, k, v)
        frames.append(df.reset_index(drop=True))
    return pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "\u2191": r"$\uparrow$", "\u2193": r"$\downarrow$"}


def tex_escape(text: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text).replace("\n", " "))


def render_latex(lb: Leaderboard) -> str:
    out = [f"% Generated by wsss-bench from run records (protocol v{', '.join(lb.protocol_versions)}); "
           "do not edit by hand.", f"% Regenerate with: {lb.command}",
           "% Needs \\usepackage{booktabs}. Best value per column in bold; mIoU and ratios in %.", ""]
    for gr in lb.groups:
        keys = [k for k in gr.metric_keys if k != "images_per_second"]
        best = {k: _best_rows(gr, k) for k in keys}
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{tex_escape(gr.group.title)}. Sorted by {tex_escape(gr.spec(lb.sort.key).display)}.}}",
                f"\\label{{tab:{gr.group.slug}}}",
                "\\begin{tabular}{l" + "l" * 2 + "r" * len(keys) + "}", "\\toprule",
                " & ".join(["Method", "Backbone", "Settings"] + [tex_escape(gr.spec(k).header) for k in keys])
                + " \\\\", "\\midrule"]
        for i in range(len(gr.frame)):
            row = gr.frame.iloc[i]
            method = row["method"] + (f" ({row['variant']})" if row["variant"] else "")
            cells = [tex_escape(method), tex_escape(row["backbone"] or "-"), tex_escape(row["settings"] or "-")]
            for k in keys:
                t = tex_escape(_cell_values(gr, i, k)[0])
                cells.append(f"\\textbf{{{t}}}" if i in best[k] and t != "-" else t)
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def render_json(lb: Leaderboard, rel: Path) -> str:
    groups = []
    for gr in lb.groups:
        rows = [{k: _clean(v) for k, v in rec.items()} for rec in gr.frame.to_dict(orient="records")]
        for r, pub, c in zip(rows, gr.published, gr.ci or [None] * len(rows), strict=True):
            r["published"] = pub
            if c is not None:
                r["vs_top"] = c
        pc = gr.per_class
        groups.append({
            "protocol_version": gr.group.protocol_version, "dataset": gr.group.dataset, "split": gr.group.split,
            "kind": gr.group.kind, "classes": list(pc.columns), "rows": rows,
            "per_class_iou": {lab: [_clean(float(v)) for v in pc.loc[lab].to_numpy()] for lab in pc.index},
            "best_per_class": {lab: [bool(v) for v in gr.best.loc[lab].to_numpy()] for lab in gr.best.index},
            "plots": {k: (p.relative_to(rel) if p.is_relative_to(rel) else p).as_posix() for k, p in gr.plots.items()},
            "grid_ids": gr.grid_ids,
        })
    doc = {"generator": "wsss-bench leaderboard", "title": lb.title, "command": lb.command,
           "protocol_versions": lb.protocol_versions, "sort": lb.sort.key,
           "sort_higher_is_better": lb.sort.higher_is_better, "num_records": lb.num_records,
           "note": GROUP_NOTE, "groups": groups,
           "published": None if lb.baselines is None else
           [{k: _clean(v) for k, v in r.items()} for r in lb.baselines.to_dict(orient="records")]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"

