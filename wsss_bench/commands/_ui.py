"""Terminal output shared by the commands: progress bars and result tables (rich)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Any]:
    """Yields ``update(done, total)``; draws on stderr, quiet when not a terminal or in CI."""
    quiet = not sys.stderr.isatty() or os.environ.get("CI") == "true"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=quiet) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, total_: int | None = None) -> None:
            prog.update(task, completed=done, total=total_ if total_ is not None else total)

        yield update


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def per_class_table(record: dict[str, Any], title: str | None = None) -> Table:
    m = record["metrics"]
    t = Table(title=title, show_lines=False, header_style="bold")
    t.add_column("class")
    for col in ("IoU", "precision", "recall", "FP ratio", "FN ratio"):
        t.add_column(col, justify="right")
    for i, name in enumerate(record["classes"]):
        t.add_row(name, pct(m["iou"][i]), pct(m["precision"][i]), pct(m["recall"][i]),
                  pct(m["fp_ratio"][i]), pct(m["fn_ratio"][i]))
    t.add_section()
    t.add_row("[bold]mIoU[/bold]", f"[bold]{pct(m['miou'])}[/bold]", "", "", "", "")
    return t


def summary_lines(record: dict[str, Any]) -> list[str]:
    m = record["metrics"]
    lines = [f"{record['kind']} | {record['dataset']}/{record['split']} | {record['num_images']} images | "
             f"mIoU {pct(m['miou'])} over {m['num_valid_classes']} classes | "
             f"pixel acc. {pct(m['pixel_accuracy'])} | fwIoU {pct(m['fw_iou'])}"]
    if record["kind"] == "pseudo_label":
        cal = record.get("calibrated") or {}
        line = f"best threshold {record['best_threshold']:.2f}"
        if cal.get("threshold") is not None:
            line += (f" | calibrated mIoU {pct(cal['miou'])} (threshold {cal['threshold']:.2f} chosen on "
                     f"{cal['calibration_images']} images, scored on {cal['num_images']})")
        nat = record.get("native")
        if nat:
            line += f" | native threshold {nat['threshold']:.2f}: mIoU {pct(nat['miou'])}"
        lines.append(line)
    return lines


def summary_table(records: list[dict[str, Any]]) -> Table:
    t = Table(title="wsss-bench: pseudo-label quality", header_style="bold")
    for col, just in (("run", "left"), ("method", "left"), ("settings", "left"), ("best mIoU", "right"),
                      ("best t", "right"), ("calibrated mIoU", "right"), ("native mIoU", "right"),
                      ("images/s", "right")):
        t.add_column(col, justify=just)
    for r in sorted(records, key=lambda r: -(r["metrics"]["miou"] or 0)):
        if r["kind"] != "pseudo_label":
            continue
        ips = (r.get("timings") or {}).get("images_per_second")
        t.add_row(r.get("name") or "", r.get("method") or r.get("segmenter") or "",
                  (r.get("settings") or {}).get("name", ""), pct(r["metrics"]["miou"]),
                  f"{r['best_threshold']:.2f}" if r.get("best_threshold") is not None else "-",
                  pct((r.get("calibrated") or {}).get("miou")), pct((r.get("native") or {}).get("miou")),
                  f"{ips:.1f}" if ips else "-")
    return t
