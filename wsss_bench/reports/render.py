"""Renderers: one leaderboard model -> Markdown, CSV, LaTeX (booktabs + tabularx), JSON; HTML in
:mod:`wsss_bench.reports.html`.

Every string from a record is escaped for the target format: entity/backslash escapes for
Markdown, the LaTeX specials for LaTeX (HTML: jinja2 autoescape and pandas' Styler). Metric values
are fractions in the frame and percentages in every view; CSV and JSON name such columns
``<metric>_pct``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wsss_bench.reports.descriptors import METRICS, MetricSpec
from wsss_bench.reports.table import Group

PSEUDO_COLUMNS = ("miou_best", "best_threshold", "miou_calibrated", "miou_native", "miou_official", "precision", "recall",
                  "fp_ratio", "fn_ratio", "images_per_second", "peak_memory_mb")
SEG_COLUMNS = ("miou_best", "pseudo_miou", "precision", "recall", "fp_ratio", "fn_ratio", "pixel_accuracy",
               "images_per_second", "peak_memory_mb")
TEXT_BEFORE = ("method", "variant", "backbone", "settings")

#: The project's documents the reports cite, relative to the repository root.
DOCS = {"protocol": "docs/protocol.md", "methods": "docs/methods.md"}


@dataclass
class Column:
    """A column of the main table: ``key`` in the frame, ``header`` shown, sort metadata."""

    key: str
    header: str
    numeric: bool
    better: str = "none"  # "high" | "low" | "none"
    description: str = ""


@dataclass
class Training:
    """A trained segmenter's training provenance, for the loss-curve figure."""

    label: str
    loss_plot: Path | None
    log: Path | None
    iterations: int | None
    seconds: float | None


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
    notes: list[str] = field(default_factory=list)  # e.g. why the qualitative grid is missing
    pipeline: pd.DataFrame | None = None  # segmentation groups: pseudo labels -> segmenter, per row
    training: list[Training] = field(default_factory=list)

    def spec(self, key: str) -> MetricSpec:
        s = METRICS[key]
        if key == "miou_best" and self.group.kind == "segmentation":
            return MetricSpec(s.key, "mIoU", s.higher_is_better, s.percent, s.digits, "mIoU of the masks")
        return s

    @property
    def devices(self) -> list[str]:
        return sorted({d for d in self.frame["device"].tolist() if d})

    @property
    def memory_kinds(self) -> list[str]:
        return sorted({k for k in self.frame["peak_memory_kind"].tolist() if k})

    @property
    def caption(self) -> str:
        """One line under the group's title: image set, device, sibling groups."""
        parts = [self.group.image_set]
        if len(self.devices) == 1:
            parts.append(f"device: {self.devices[0]}")
        return " \u00b7 ".join(parts)

    @property
    def sibling_note(self) -> str:
        g = self.group
        if not g.siblings:
            return ""
        return (f"Other records of {g.dataset} {g.split} ({'pseudo labels' if g.kind == 'pseudo_label' else 'segmentation'}, "
                f"protocol version {g.protocol_version}) were scored on a different image set (another fingerprint, "
                f"e.g. a --limit run); they are in {g.siblings} separate table{'s' if g.siblings > 1 else ''} "
                f"and are not ranked against these.")


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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def protocol_versions(self) -> list[str]:
        return sorted({str(g.group.protocol_version) for g in self.groups})

    def doc_link(self, name: str) -> str | None:
        """Relative link from the output folder to ``docs/<name>.md`` when the output folder lies
        inside the wsss-bench source tree (a committed leaderboard), else ``None``."""
        root = Path(__file__).resolve().parents[2]
        if not (root / "pyproject.toml").is_file():
            return None
        out = Path(os.path.abspath(self.out_dir))
        try:
            out.relative_to(root)
        except ValueError:
            return None
        return Path(os.path.relpath(root / DOCS[name], out)).as_posix()


GROUP_NOTE = ("Records are ranked only against records of the same protocol version, dataset, split, kind and "
              "image set (fingerprint); each group has its own table.")
PUBLISHED_NOTE = ("Published numbers are what the papers and repositories report, under their own evaluation "
                  "code and refinements (see \u201cincludes\u201d). They are not measured here and never ranked.")
PIPELINE_NOTE = ("Each segmenter was trained by wsss-bench train-seg on the pseudo labels of the named record "
                 "(one recipe for every method), then scored on this split under the same protocol.")


def published_miou(v: float) -> str:
    """A published mIoU as the sources print it: one decimal, or two where the source gives two."""
    if math.isnan(v):
        return "none stated"
    return f"{v:.1f}" if abs(round(v * 10) - v * 10) < 1e-9 else f"{v:.2f}"


def signed(x: float, digits: int = 1) -> str:
    """``x`` with its sign, never ``-0.0`` (a difference that rounds to zero reads ``+0.0``)."""
    s = f"{x:+.{digits}f}"
    return "+" + s[1:] if float(s) == 0 else s


def ci_text(ci: dict[str, Any] | str | None, compact: bool = False) -> str:
    if ci is None:
        return ""
    if ci == "top":
        return "reference"
    if isinstance(ci, str):
        return ci
    text = (f"{signed(100 * ci['difference'])} [{signed(100 * ci['ci_low'])}, {signed(100 * ci['ci_high'])}]")
    return text if compact else text + f" (better in {100 * ci['share_a_better']:.0f}%)"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def best_rows(gr: GroupReport, key: str) -> set[int]:
    spec = gr.spec(key)
    if spec.higher_is_better is None or (key == "peak_memory_mb" and len(gr.memory_kinds) > 1):
        return set()  # no direction, or device memory beside process memory: nothing to compare
    vals = [v for v in gr.frame[key].tolist() if not _missing(v)]
    if not vals:
        return set()
    best = max(vals) if spec.higher_is_better else min(vals)
    return {i for i, v in enumerate(gr.frame[key].tolist()) if v == best}


def columns(gr: GroupReport, ci: bool) -> list[Column]:
    """The main table's columns in display order; text columns empty in every row are left out,
    and the device column when every run used the same device (the caption names it)."""
    cols = [Column("rank", "#", True, "low", "rank by the sort metric")]
    for k in TEXT_BEFORE:
        if k == "method" or any(gr.frame[k].astype(str).str.len() > 0):
            cols.append(Column(k, k, False))
    better = {True: "high", False: "low", None: "none"}
    for k in gr.metric_keys:
        s = gr.spec(k)
        header = s.header
        if k == "peak_memory_mb" and len(gr.memory_kinds) == 1:
            header = f"peak MiB ({gr.memory_kinds[0]}) {s.arrow}"
        cols.append(Column(k, header, True, better[s.higher_is_better], s.description))
    if len(gr.devices) > 1:
        cols.append(Column("device", "device", False))
    if any(gr.published):
        cols.append(Column("published", "published", False, "none",
                           "what the method's paper or repository reports (not measured here)"))
    if ci:
        cols.append(Column("ci", "\u0394 mIoU vs #1 [95% CI]", True, "high",
                           "paired bootstrap over images against the top row"))
    if any(gr.frame["notes"].astype(str).str.len() > 0):
        cols.append(Column("notes", "notes", False))
    return cols


def cell(gr: GroupReport, i: int, key: str, compact: bool = False) -> tuple[str, Any]:
    """(display text, sort value) of row ``i``, column ``key``."""
    row = gr.frame.iloc[i]
    if key == "published":
        return gr.published[i], None
    if key == "ci":
        c = gr.ci[i] if i < len(gr.ci) else None
        return ci_text(c, compact), (c["difference"] if isinstance(c, dict) else None)
    v = row[key]
    if _missing(v):
        v = None
    if key in METRICS:
        text = gr.spec(key).format(v)
        if key == "peak_memory_mb" and v is not None and len(gr.memory_kinds) > 1 and row["peak_memory_kind"]:
            text += f" ({row['peak_memory_kind']})"
        return text, v
    return ("" if v is None else str(v)), v


def transpose_per_class(gr: GroupReport) -> bool:
    """Show classes as rows (runs as columns) when there are many classes (VOC 21, COCO 81)."""
    return gr.per_class.shape[1] > 12 and gr.per_class.shape[1] > gr.per_class.shape[0]


def legend_text(gr: GroupReport, ci: bool, samples: int) -> str:
    parts = [f"{gr.spec(k).header}: {gr.spec(k).description}" for k in gr.metric_keys]
    text = "Columns: " + "; ".join(parts) + ". Bold: best in column. \u2191 higher is better, \u2193 lower is better."
    if ci:
        text += (f" \u0394: mIoU difference to the top row in points, with its paired-bootstrap 95% interval over "
                 f"images ({samples} resamples; the share of resamples in which a row beats the top one is in "
                 "leaderboard.csv and leaderboard.json).")
    return text


def _rel(p: Path, rel: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(rel))).as_posix()
    except ValueError:
        return p.as_posix()


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def md_escape(text: Any) -> str:
    s = str(text).replace("\r", " ").replace("\n", " ")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]|#$":
        s = s.replace(ch, "\\" + ch)
    return s


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join({"r": "---:", "l": ":---", "c": ":---:"}[a] for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _md_doc(lb: Leaderboard, name: str) -> str:
    link = lb.doc_link(name)
    return f"[{DOCS[name]}]({link})" if link else f"`{DOCS[name]}`"


def render_markdown(lb: Leaderboard, rel: Path) -> str:
    direction = {True: "higher is better", False: "lower is better", None: "ascending"}[lb.sort.higher_is_better]
    lines = [f"# {md_escape(lb.title)}", "",
             "> Generated by wsss-bench from run records; do not edit by hand. Regenerate with:", ">",
             f"> `{lb.command.replace('`', '')}`", "",
             f"Protocol version {', '.join(lb.protocol_versions)} ({_md_doc(lb, 'protocol')}; methods: "
             f"{_md_doc(lb, 'methods')}) \u00b7 {lb.num_records} records \u00b7 sorted by "
             f"{md_escape(lb.sort.display)} ({direction}). {GROUP_NOTE}", ""]
    if lb.skipped:
        lines += [f"**Skipped {len(lb.skipped)} malformed record file{'s' if len(lb.skipped) > 1 else ''}:**", ""]
        lines += [f"- `{f.replace('`', '')}`: {md_escape(why)}" for f, why in lb.skipped] + [""]
    ci = lb.ci_samples > 0
    for gr in lb.groups:
        lines += [f"## {md_escape(gr.group.title)}", "", md_escape(gr.caption), ""]
        if gr.sibling_note:
            lines += [f"> **Note:** {md_escape(gr.sibling_note)}", ""]
        cols = columns(gr, ci)
        best = {k: best_rows(gr, k) for k in gr.metric_keys}
        rows = []
        for i in range(len(gr.frame)):
            cells = []
            for c in cols:
                text = md_escape(cell(gr, i, c.key, compact=True)[0])
                if c.key in best and i in best[c.key] and text != "-":
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        lines += _md_table([md_escape(c.header) for c in cols], rows, ["r" if c.numeric else "l" for c in cols])
        lines += ["", md_escape(legend_text(gr, ci, lb.ci_samples)), ""]
        if gr.pipeline is not None:
            lines += ["### Pipeline: pseudo labels \u2192 trained segmenter", "", md_escape(PIPELINE_NOTE), ""]
            pf = gr.pipeline
            lines += _md_table([md_escape(c) for c in pf.columns],
                               [[md_escape(v) for v in r] for r in pf.astype(str).itertuples(index=False)],
                               ["l" if not str(c).endswith("(%)") else "r" for c in pf.columns])
            lines.append("")
        for t in gr.training:
            if t.loss_plot is not None:
                lines += [f"![training loss of {md_escape(t.label)}]({_rel(t.loss_plot, rel)})", ""]
            if t.log is not None:
                lines += [f"Training log of {md_escape(t.label)}: [{md_escape(t.log.name)}]({_rel(t.log, rel)})", ""]
        lines += ["### Per-class IoU (%)", "", "Bold: the best run for that class.", ""]
        pc, bst = gr.per_class, gr.best
        if transpose_per_class(gr):
            pc, bst = pc.T, bst.T
        rows = []
        for r, label in enumerate(pc.index):
            cells = [md_escape(label)]
            for c in range(pc.shape[1]):
                v = pc.iat[r, c]
                t = "-" if math.isnan(v) else f"{100 * v:.1f}"
                cells.append(f"**{t}**" if bst.iat[r, c] else t)
            rows.append(cells)
        first = "class" if transpose_per_class(gr) else "run"
        lines += _md_table([first] + [md_escape(c) for c in pc.columns], rows, ["l"] + ["r"] * pc.shape[1])
        lines.append("")
        for name, caption in (("curves", "mIoU versus background threshold"),
                              ("errors", "IoU / FP / FN share per run"), ("heatmap", "per-class IoU"),
                              ("grid", "qualitative samples")):
            if name in gr.plots:
                link = _rel(gr.plots[name], rel)
                extra = f" (SVG: [{name}.svg]({link[:-4]}.svg))" if name != "grid" else ""
                lines += [f"![{caption}]({link}){extra}", ""]
        if gr.grid_ids:
            lines += [f"Samples: {', '.join(md_escape(i) for i in gr.grid_ids)} (chosen by SHA-1 of the id).", ""]
        lines += [md_escape(n) + "\n" for n in gr.notes]
    lines += _published_md(lb)
    return "\n".join(lines).rstrip() + "\n"


def _published_md(lb: Leaderboard) -> list[str]:
    lines = ["## Published numbers (not measured here; not ranked)", "", PUBLISHED_NOTE, ""]
    if lb.baselines is None:
        return lines + ["The baselines file was not found.", ""]
    rows = []
    for _, b in lb.baselines.iterrows():
        miou = published_miou(b["miou"])
        src = md_escape(b["source"])
        url = str(b["source_url"])
        if url.startswith(("https://", "http://")):
            src = f"[{src}](<{url.replace('>', '%3E').replace(' ', '%20')}>)"
        rows.append([md_escape(x) for x in (_display(b["method"]), b["variant"], b["backbone"], b["dataset"],
                                            b["split"], b["stage"], miou, b["includes"])] + [src])
    lines += _md_table(["method", "variant", "backbone", "dataset", "split", "stage", "mIoU (%)", "includes",
                        "source"], rows, ["l"] * 6 + ["r", "l", "l"])
    return lines + [""]


def _display(name: Any) -> str:
    from wsss_bench.reports.names import display_name

    return display_name(str(name)) if name else ""


# ---------------------------------------------------------------------------------------------
# CSV, JSON (percent, said in the column names)
# ---------------------------------------------------------------------------------------------


def export_frame(gr: GroupReport) -> pd.DataFrame:
    """The ranked rows as CSV and JSON give them: percent metrics ×100 in ``<key>_pct`` columns."""
    df = gr.frame.copy()
    for k, spec in METRICS.items():
        if k in df.columns:
            df[k] = [spec.export(None if _missing(v) else v) for v in df[k].tolist()]
            df = df.rename(columns={k: spec.column})
    return df


def leaderboard_csv(lb: Leaderboard) -> str:
    frames = []
    for gr in lb.groups:
        df = export_frame(gr)
        g = gr.group
        for k, v in reversed(list(zip(("protocol_version", "dataset", "split", "kind", "fingerprint"), g.key,
                                      strict=True))):
            df.insert(0, k, v)
        df["published_miou_pct"] = gr.published
        if lb.ci_samples > 0:
            for k in ("difference", "ci_low", "ci_high"):
                df[f"vs_top_{k}_pct"] = [100 * c[k] if isinstance(c, dict) else None for c in gr.ci]
            df["vs_top_share_better_pct"] = [100 * c["share_a_better"] if isinstance(c, dict) else None
                                             for c in gr.ci]
        frames.append(df)
    return pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n")


def per_class_csv(lb: Leaderboard) -> str:
    frames = []
    for gr in lb.groups:
        df = (100.0 * gr.per_class).rename(columns=lambda c: f"iou_pct_{c}")
        df.insert(0, "run", list(df.index))
        df.insert(0, "rank", list(gr.frame["rank"]))
        for k, v in reversed(list(zip(("protocol_version", "dataset", "split", "kind", "fingerprint"),
                                      gr.group.key, strict=True))):
            df.insert(0, k, v)
        frames.append(df.reset_index(drop=True))
    return pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def _ci_pct(c: dict[str, Any] | str | None) -> Any:
    if not isinstance(c, dict):
        return c
    out = {k: v for k, v in c.items() if k not in ("difference", "ci_low", "ci_high", "share_a_better", "miou_a",
                                                   "miou_b")}
    for k in ("difference", "ci_low", "ci_high", "share_a_better", "miou_a", "miou_b"):
        if k in c:
            out[f"{k}_pct"] = _clean(100.0 * c[k]) if c[k] is not None else None
    return out


def render_json(lb: Leaderboard, rel: Path) -> str:
    groups = []
    for gr in lb.groups:
        rows = [{k: _clean(v) for k, v in rec.items()} for rec in export_frame(gr).to_dict(orient="records")]
        for r, pub, c in zip(rows, gr.published, gr.ci or [None] * len(rows), strict=True):
            r["published_miou_pct"] = pub
            if c is not None:
                r["vs_top"] = _ci_pct(c)
        pc = gr.per_class
        groups.append({
            "protocol_version": gr.group.protocol_version, "dataset": gr.group.dataset, "split": gr.group.split,
            "kind": gr.group.kind, "fingerprint": gr.group.fingerprint, "num_images": gr.group.num_images,
            "classes": list(pc.columns), "rows": rows,
            "per_class_iou_pct": {lab: [_clean(100.0 * float(v)) for v in pc.loc[lab].to_numpy()] for lab in pc.index},
            "best_per_class": {lab: [bool(v) for v in gr.best.loc[lab].to_numpy()] for lab in gr.best.index},
            "pipeline": None if gr.pipeline is None else
            [{k: _clean(v) for k, v in r.items()} for r in gr.pipeline.to_dict(orient="records")],
            "plots": {k: _rel(p, rel) for k, p in gr.plots.items()},
            "grid_ids": gr.grid_ids, "notes": gr.notes, "sibling_note": gr.sibling_note or None,
        })
    doc = {"generator": "wsss-bench leaderboard", "title": lb.title, "command": lb.command,
           "protocol_versions": lb.protocol_versions, "protocol_document": DOCS["protocol"],
           "methods_document": DOCS["methods"], "units": "columns ending in _pct are percent",
           "sort": lb.sort.key, "sort_higher_is_better": lb.sort.higher_is_better, "num_records": lb.num_records,
           "skipped": [{"file": f, "reason": why} for f, why in lb.skipped],
           "note": GROUP_NOTE, "groups": groups,
           "published": None if lb.baselines is None else
           [{k: _clean(v) for k, v in r.items()} for r in
            lb.baselines.rename(columns={"miou": "miou_pct"}).to_dict(orient="records")]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------
# LaTeX
# ---------------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_\allowbreak{}",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "\u2191": r"$\uparrow$", "\u2193": r"$\downarrow$", "\u2192": r"$\rightarrow$",
        "\u0394": r"$\Delta$", "/": r"/\allowbreak{}", "-": r"-\allowbreak{}"}


def tex_escape(text: Any) -> str:
    """``text`` with every LaTeX special escaped (break points allowed after ``_``, ``/``, ``-``);
    characters outside ASCII that a plain pdflatex set-up may lack become ``?``."""
    out = []
    for ch in str(text).replace("\n", " ").replace("\r", " "):
        if ch in _TEX:
            out.append(_TEX[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        elif ord(ch) > 126 and ch not in "\u00e9\u00e8\u00fc\u00f6\u00e4":
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def _tex_num(text: str) -> str:
    """A formatted number for LaTeX: a true minus sign."""
    return tex_escape(text).replace(r"-\allowbreak{}", "$-$").replace("+", "$+$")


#: Short LaTeX headers (the caption spells them out).
_TEX_HEADERS = {"miou_best": "mIoU", "miou_calibrated": "Cal.", "miou_native": "Nat.", "precision": "P",
                "recall": "R", "fp_ratio": "FP", "fn_ratio": "FN", "pixel_accuracy": "Acc.",
                "pseudo_miou": "Pseudo", "best_threshold": "Thr."}
_TEX_PSEUDO = ("miou_best", "miou_calibrated", "miou_native", "fp_ratio", "fn_ratio")
_TEX_SEG = ("miou_best", "pseudo_miou", "fp_ratio", "fn_ratio", "pixel_accuracy")


def render_latex(lb: Leaderboard) -> str:
    """One ``table`` per group, ``\\linewidth`` wide (``tabularx``: method and backbone wrap, numbers
    never do), booktabs rules, best value per column in bold, the bootstrap column when ``--ci``.
    Needs ``\\usepackage{booktabs,tabularx}``."""
    ci = lb.ci_samples > 0
    out = [f"% Generated by wsss-bench from run records (protocol version {', '.join(lb.protocol_versions)}, "
           f"{DOCS['protocol']}); do not edit by hand.", f"% Regenerate with: {lb.command}",
           "% Needs \\usepackage{booktabs,tabularx}. Best value per column in bold; mIoU and ratios in %.", ""]
    for gr in lb.groups:
        wanted = _TEX_PSEUDO if gr.group.kind == "pseudo_label" else _TEX_SEG
        keys = [k for k in wanted if k in gr.metric_keys]
        best = {k: best_rows(gr, k) for k in keys}
        has_backbone = any(gr.frame["backbone"].astype(str).str.len() > 0)
        x = ">{\\raggedright\\arraybackslash}X"
        spec = (">{\\hsize=1.2\\hsize\\raggedright\\arraybackslash}X >{\\hsize=0.8\\hsize\\raggedright"
                "\\arraybackslash}X") if has_backbone else x
        spec = "@{}" + spec + " " + "r" * len(keys) + (" r" if ci else "") + "@{}"
        legend = "; ".join(f"{_TEX_HEADERS[k]}: {gr.spec(k).display}" for k in keys)
        cap = (f"{tex_escape(gr.group.title)}, {tex_escape(gr.group.image_set)}. Sorted by "
               f"{tex_escape(gr.spec(lb.sort.key).display)}. {tex_escape(legend)} (all in \\%; "
               f"FP/FN: mean share of false positives/negatives, lower is better).")
        if ci:
            cap += (f" $\\Delta$: mIoU difference to the first row with its paired-bootstrap 95\\% interval "
                    f"({lb.ci_samples} resamples over images).")
        head = ["Method"] + (["Backbone"] if has_backbone else []) + [_TEX_HEADERS[k] for k in keys]
        head += ["$\\Delta$ [95\\% CI]"] if ci else []
        out += ["\\begin{table}[t]", "\\centering", "\\footnotesize", "\\setlength{\\tabcolsep}{3.5pt}",
                f"\\caption{{{cap}}}", f"\\label{{tab:{gr.group.slug}}}",
                f"\\begin{{tabularx}}{{\\linewidth}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
        for i in range(len(gr.frame)):
            row = gr.frame.iloc[i]
            name = " / ".join(str(x) for x in (row["method"], row["variant"], row["settings"]) if x)
            cells = [tex_escape(name)] + ([tex_escape(row["backbone"] or "-")] if has_backbone else [])
            for k in keys:
                t = _tex_num(cell(gr, i, k)[0])
                cells.append(f"\\textbf{{{t}}}" if i in best[k] and t != "$-$" else t)
            if ci:
                c = gr.ci[i] if i < len(gr.ci) else None
                cells.append("(reference)" if c == "top" else
                             _tex_num(ci_text(c, compact=True)) if isinstance(c, dict) else "n/a")
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabularx}", "\\end{table}", ""]
    return "\n".join(out)
