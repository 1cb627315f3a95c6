"""``wsss-bench leaderboard``, ``compare`` and ``export-voc-test``: reports from run records.

None of them imports torch. ``compare`` reads two records with numpy only (no pandas, no
matplotlib); ``leaderboard`` imports pandas for its tables and matplotlib when it draws.
Options are checked before any work: formats against :data:`FORMATS`, output paths, ranges.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from typing import Any

import typer

from wsss_bench.commands._options import (
    VocComp,
    check_output_file,
    check_output_folder,
    choice_enum,
    value_of,
)
from wsss_bench.commands._ui import console, err_console
from wsss_bench.errors import WsssBenchError
from wsss_bench.reports.descriptors import METRICS

#: Leaderboard formats (``wsss_bench.reports.leaderboard.FORMATS``, which imports pandas; a test checks
#: that the two agree).
FORMATS = ("md", "html", "csv", "tex", "json")
DEFAULT_FORMATS = ",".join(FORMATS)
#: ``leaderboard --sort``: every metric of :data:`wsss_bench.reports.descriptors.METRICS`
SortMetric = choice_enum("SortMetric", tuple(METRICS))


def parse_formats(value: str) -> list[str]:
    """``"md,html"`` -> ``["md", "html"]`` (lower case, duplicates dropped); an unknown or missing
    format is a usage error naming the valid ones."""
    fmts = list(dict.fromkeys(f.strip().lower() for f in str(value).split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        what = f"unknown format {bad[0]!r}" if bad else "no format given"
        raise typer.BadParameter(f"{what} (choose some of {', '.join(FORMATS)}, comma-separated)")
    return fmts


def deprecated_alias(new: Any, old: Any, new_flag: str, old_flag: str, default: Any) -> Any:
    """The value of an option renamed from ``old_flag`` to ``new_flag`` (the old spelling stays as a
    hidden option whose default is ``None``): the old one's value with a warning on stderr; both
    given is an error."""
    if old is None:
        return new
    if new != default:
        raise WsssBenchError(f"give {new_flag} only ({old_flag} is its deprecated spelling)")
    err_console.print(f"warning: {old_flag} is deprecated; use {new_flag}", markup=False, highlight=False)
    return old


def leaderboard_command(
    records: list[Path] = typer.Argument(..., metavar="RECORD", show_default=False,
                                         help="Run record files (.json) or folders holding them (searched "
                                         "recursively)."),
    out: Path = typer.Option(Path("leaderboard"), "--out", metavar="DIR",
                             help="Output folder for pages, tables and plots."),
    format: str = typer.Option(DEFAULT_FORMATS, "--format", metavar="FMT,...", callback=parse_formats,
                               help=f"Comma-separated formats, any of {', '.join(FORMATS)}."),
    sort: SortMetric = typer.Option(SortMetric("miou_best"), "--sort", metavar="METRIC",
                                    help="Metric to rank by, its direction known: " + ", ".join(METRICS) + "."),
    ci: bool = typer.Option(False, "--ci", help="Add a paired-bootstrap 95% interval of every row against the "
                            "top row of its group."),
    ci_resamples: int = typer.Option(1000, "--ci-resamples", min=1, metavar="N",
                                     help="Bootstrap resamples for --ci."),
    ci_samples_alias: int = typer.Option(None, "--ci-samples", min=1, hidden=True,
                                         help="Deprecated spelling of --ci-resamples."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="N", help="Bootstrap seed for --ci."),
    grid_images: int = typer.Option(0, "--grid-images", min=0, metavar="N",
                                    help="Images in the qualitative grid of pseudo-label runs that saved their "
                                    "maps (0: no grid)."),
    samples_alias: int = typer.Option(None, "--samples", min=0, hidden=True,
                                      help="Deprecated spelling of --grid-images."),
    title: str = typer.Option(None, "--title", help="Page title."),
    plots: bool = typer.Option(True, "--plots/--no-plots",
                               help="Draw the plots (PNG and SVG, linked from the md, html and json pages); "
                               "--no-plots writes the tables only, in a fraction of the time."),
) -> None:
    """Build a leaderboard from run records: Markdown, HTML, CSV, LaTeX, JSON and plots.

    Records are grouped by protocol version, dataset, split, kind and image set (fingerprint), and
    ranked within a group only (docs/protocol.md). Malformed records in a folder are skipped with a
    warning naming the file. Published numbers from baselines/ are shown beside them, never ranked.

    Example: [bold]wsss-bench leaderboard leaderboards/demo/records --out leaderboards/demo --ci
    --grid-images 4[/bold]
    """
    grid_images = deprecated_alias(grid_images, samples_alias, "--grid-images", "--samples", 0)
    ci_resamples = deprecated_alias(ci_resamples, ci_samples_alias, "--ci-resamples", "--ci-samples", 1000)
    formats = format if isinstance(format, list) else parse_formats(format)
    sort_key = value_of(sort)
    check_output_folder(out, "--out")

    from wsss_bench.reports import build_leaderboard
    from wsss_bench.reports.table import ReportWarning

    parts = ["wsss-bench", "leaderboard", *map(str, records), "--out", str(out)]
    if formats != list(FORMATS):
        parts += ["--format", ",".join(formats)]
    if sort_key != "miou_best":
        parts += ["--sort", sort_key]
    if ci:
        parts += ["--ci"] + (["--ci-resamples", str(ci_resamples)] if ci_resamples != 1000 else []) + \
            (["--seed", str(seed)] if seed else [])
    if grid_images:
        parts += ["--grid-images", str(grid_images)]
    if title:
        parts += ["--title", title]
    if not plots:
        parts += ["--no-plots"]
    command = " ".join(shlex.quote(p) for p in parts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = build_leaderboard(records, out, formats=tuple(formats), sort=sort_key, ci=ci, samples=grid_images,
                                  title=title, command=command, ci_samples=ci_resamples, seed=seed, plots=plots)
    for w in caught:  # ours: one line each (a skipped record names its file); others as Python shows them
        if issubclass(w.category, ReportWarning):
            err_console.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    pages = [f for f in files if f.parent == out]
    console.print(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in pages), markup=False)


def compare_command(
    a: Path = typer.Argument(..., metavar="A.json", show_default=False, help="Record A."),
    b: Path = typer.Argument(..., metavar="B.json", show_default=False, help="Record B."),
    resamples: int = typer.Option(1000, "--resamples", min=1, metavar="N",
                                  help="Bootstrap resamples (N images drawn with replacement, the same draw "
                                  "for A and B)."),
    samples_alias: int = typer.Option(None, "--samples", min=1, hidden=True,
                                      help="Deprecated spelling of --resamples."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="N", help="Random seed of the resampling."),
) -> None:
    """Paired bootstrap over images: is A's mIoU really higher than B's?

    Both records must come from the same protocol version and the same images (fingerprint).

    Example: [bold]wsss-bench compare records/edam-native.json records/cam-native.json --resamples 1000
    --seed 0[/bold]
    """
    from rich.table import Table
    from rich.text import Text

    from wsss_bench.records import read_record
    from wsss_bench.reports.bootstrap import paired_bootstrap
    from wsss_bench.reports.table import method_name

    resamples = deprecated_alias(resamples, samples_alias, "--resamples", "--samples", 1000)
    ra, rb = read_record(a), read_record(b)
    res = paired_bootstrap(ra, rb, samples=resamples, seed=seed)
    t = Table(header_style="bold")
    for col in ("", "mIoU"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row(Text(f"A: {method_name(ra)} ({a.name})"), f"{100 * res['miou_a']:.2f}")
    t.add_row(Text(f"B: {method_name(rb)} ({b.name})"), f"{100 * res['miou_b']:.2f}")
    console.print(t)
    console.print(f"difference A - B: {100 * res['difference']:+.2f} mIoU points, 95% interval "
                  f"[{100 * res['ci_low']:+.2f}, {100 * res['ci_high']:+.2f}]", markup=False)
    console.print(f"A beats B in {100 * res['share_a_better']:.1f}% of {res['samples']} resamples "
                  f"(paired over {res['n_images']} images, seed {res['seed']})", markup=False)


def export_voc_test_command(
    pred_dir: Path = typer.Argument(..., metavar="PRED_DIR", show_default=False,
                                    help="Folder of predicted masks <id>.png (class indices 0..20)."),
    out: Path = typer.Option(Path("results.tar.gz"), "--out", metavar="FILE.tar.gz",
                             help="Archive to write (.tar.gz or .tgz)."),
    data_root: Path = typer.Option(None, "--data-root", metavar="DIR", help="VOC 2012 root: check every id of "
                                   "ImageSets/Segmentation/test.txt is present with its image's size."),
    comp: VocComp = typer.Option(VocComp("comp6"), "--comp", help="comp6 (outside data such as ImageNet "
                                 "pre-training, the WSSS norm) or comp5 (VOC data only)."),
) -> None:
    """Pack VOC 2012 test predictions for the evaluation server (validated palette PNGs).

    Example: [bold]wsss-bench export-voc-test preds/test --data-root VOC2012 --out results.tar.gz[/bold]
    """
    if out.suffixes[-2:] != [".tar", ".gz"] and out.suffix != ".tgz":
        raise WsssBenchError("the archive name must end in .tar.gz or .tgz", out)
    check_output_file(out, "--out")
    comp_name = value_of(comp)

    from wsss_bench.reports import export_voc_test

    path = export_voc_test(pred_dir, out, data_root=data_root, comp=comp_name)
    console.print(f"wrote {path} ({path.stat().st_size} bytes): results/VOC2012/Segmentation/{comp_name}_test_cls/",
                  markup=False)


def register(app: typer.Typer) -> None:
    app.command("leaderboard", no_args_is_help=True)(leaderboard_command)
    app.command("compare", no_args_is_help=True)(compare_command)
    app.command("export-voc-test", no_args_is_help=True)(export_voc_test_command)
