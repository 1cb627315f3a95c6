"""``wsss-bench leaderboard``, ``compare`` and ``export-voc-test``: reports from run records."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import typer
from rich.table import Table

from wsss_bench.commands._ui import console, err_console
from wsss_bench.errors import WsssBenchError


def leaderboard_command(
    records: list[Path] = typer.Argument(..., help="Run record files (.json) or folders holding them."),
    out: Path = typer.Option(Path("leaderboard"), "--out", help="Output folder for pages, tables and plots."),
    format: str = typer.Option("md,html,csv,tex,json", "--format",
                               help="Comma-separated formats: md, html, csv, tex, json."),
    sort: str = typer.Option("miou_best", "--sort", help="Metric to rank by: miou_best, miou_calibrated, "
                             "miou_native, precision, recall, fp_ratio, fn_ratio, pixel_accuracy, fw_iou, "
                             "images_per_second, seconds, peak_memory_mb, best_threshold (direction known per "
                             "metric)."),
    ci: bool = typer.Option(False, "--ci", help="Add a paired-bootstrap 95% interval of every row against the "
                            "top row of its group."),
    ci_samples: int = typer.Option(1000, "--ci-samples", help="Bootstrap resamples for --ci."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed for --ci."),
    samples: int = typer.Option(0, "--samples", help="Images in the qualitative grid (runs that saved maps)."),
    title: str = typer.Option(None, "--title", help="Page title."),
) -> None:
    """Build a leaderboard from run records: Markdown, HTML, CSV, LaTeX, JSON and plots.

    Records are grouped by protocol version, dataset, split, kind and image set (fingerprint), and
    ranked within a group only (docs/protocol.md). Malformed records in a folder are skipped with a
    warning naming the file. Published numbers from baselines/ are shown beside them, never ranked.

    Example: [bold]wsss-bench leaderboard leaderboards/demo/records --out leaderboards/demo --ci --samples 4[/bold]
    """
    from wsss_bench.reports import build_leaderboard

    parts = ["wsss-bench", "leaderboard", *map(str, records), "--out", str(out)]
    if format != "md,html,csv,tex,json":
        parts += ["--format", format]
    if sort != "miou_best":
        parts += ["--sort", sort]
    if ci:
        parts += ["--ci"] + (["--ci-samples", str(ci_samples)] if ci_samples != 1000 else []) + \
            (["--seed", str(seed)] if seed else [])
    if samples:
        parts += ["--samples", str(samples)]
    if title:
        parts += ["--title", title]
    command = " ".join(shlex.quote(p) for p in parts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = build_leaderboard(records, out, formats=tuple(format.split(",")), sort=sort, ci=ci,
                                  samples=samples, title=title, command=command, ci_samples=ci_samples, seed=seed)
    from wsss_bench.reports.table import ReportWarning

    for w in caught:  # ours: one line each (a skipped record names its file); others as Python shows them
        if issubclass(w.category, ReportWarning):
            err_console.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    pages = [f for f in files if f.parent == out]
    console.print(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in pages), markup=False)


def compare_command(
    a: Path = typer.Argument(..., help="Record A (.json)."),
    b: Path = typer.Argument(..., help="Record B (.json)."),
    samples: int = typer.Option(1000, "--samples", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the resampling."),
) -> None:
    """Paired bootstrap over images: is A's mIoU really higher than B's?

    Both records must come from the same protocol version and the same images (fingerprint).

    Example: [bold]wsss-bench compare records/edam.json records/cam.json --samples 1000 --seed 0[/bold]
    """
    from wsss_bench.records import read_record
    from wsss_bench.reports import paired_bootstrap
    from wsss_bench.reports.table import method_name

    ra, rb = read_record(a), read_record(b)
    res = paired_bootstrap(ra, rb, samples=samples, seed=seed)
    t = Table(header_style="bold")
    for col in ("", "mIoU"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row(f"A: {method_name(ra)} ({a.name})", f"{100 * res['miou_a']:.2f}")
    t.add_row(f"B: {method_name(rb)} ({b.name})", f"{100 * res['miou_b']:.2f}")
    console.print(t, markup=False)
    console.print(f"difference A - B: {100 * res['difference']:+.2f} mIoU points, 95% interval "
                  f"[{100 * res['ci_low']:+.2f}, {100 * res['ci_high']:+.2f}]")
    console.print(f"A beats B in {100 * res['share_a_better']:.1f}% of {res['samples']} resamples "
                  f"(paired over {res['n_images']} images, seed {res['seed']})")


def export_voc_test_command(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted masks <id>.png (class indices 0..20)."),
    out: Path = typer.Option(Path("results.tar.gz"), "--out", help="Archive to write."),
    data_root: Path = typer.Option(None, "--data-root", help="VOC 2012 root: check every id of "
                                   "ImageSets/Segmentation/test.txt is present with its image's size."),
    comp: str = typer.Option("comp6", "--comp", help="comp6 (outside data such as ImageNet pre-training, "
                             "the WSSS norm) or comp5 (VOC data only)."),
) -> None:
    """Pack VOC 2012 test predictions for the evaluation server (validated palette PNGs).

    Example: [bold]wsss-bench export-voc-test preds/test --data-root VOC2012 --out results.tar.gz[/bold]
    """
    from wsss_bench.reports import export_voc_test

    if out.suffixes[-2:] != [".tar", ".gz"] and out.suffix != ".tgz":
        raise WsssBenchError("the archive name must end in .tar.gz or .tgz", out)
    path = export_voc_test(pred_dir, out, data_root=data_root, comp=comp)
    console.print(f"wrote {path} ({path.stat().st_size} bytes): results/VOC2012/Segmentation/{comp}_test_cls/")


def register(app: typer.Typer) -> None:
    app.command("leaderboard", no_args_is_help=True)(leaderboard_command)
    app.command("compare", no_args_is_help=True)(compare_command)
    app.command("export-voc-test", no_args_is_help=True)(export_voc_test_command)
