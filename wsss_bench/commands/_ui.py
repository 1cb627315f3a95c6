"""Terminal output shared by the commands: progress, result tables, detail blocks (rich).

Everything here reads well at 80 columns and in a log file: tables use short headers and wrap long
names instead of cutting them, and progress without a terminal (nohup, SLURM, a pipe) is plain log
lines at a sensible rate instead of a bar (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

#: ``WSSS_BENCH_PROGRESS``: ``bar`` (rich bar, the default on a terminal), ``log`` (plain lines, the
#: default otherwise) or ``off``.
PROGRESS_ENV = "WSSS_BENCH_PROGRESS"
#: Log-line progress: a line at every ``LOG_STEP`` of the total, at least every ``LOG_SECONDS``, and
#: never two lines within ``LOG_MIN_SECONDS`` (work shorter than that prints no progress at all).
LOG_STEP = 0.10
LOG_SECONDS = 30.0
LOG_MIN_SECONDS = 5.0


def progress_mode(stream: TextIO | None = None) -> str:
    """``bar``, ``log`` or ``off``: ``$WSSS_BENCH_PROGRESS`` if set, else a bar on a terminal and log
    lines anywhere else."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("bar", "log", "off"):
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "log"


def fmt_duration(seconds: float) -> str:
    """``73`` -> ``1:13``; ``3725`` -> ``1:02:05``."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """Progress as plain lines for logs: ``name: 146/1464 images (10%), 12.3 images/s, 0:12 elapsed,
    eta 1:47``, one at every 10 % of the total and at least every 30 s while work goes on, never two
    within 5 s, and one at the end of work that lasted 5 s or more. Work shorter than 5 s prints
    nothing. The rate counts from the first update, so start-up (model loading) does not dilute it."""

    def __init__(self, description: str, total: int | None, unit: str = "images",
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 step: float | None = None, seconds: float | None = None, min_seconds: float | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self.step = LOG_STEP if step is None else step
        self.seconds = LOG_SECONDS if seconds is None else seconds
        self.min_seconds = LOG_MIN_SECONDS if min_seconds is None else min_seconds
        self.t0 = clock()
        self.first: tuple[float, int] | None = None  # (time, done) of the first update
        self.done = 0
        self.last_line_t = self.t0
        self.last_bucket = 0
        self.written = -1  # ``done`` of the last line written
        self.finished = False

    def rate(self, now: float) -> float | None:
        if self.first is None:
            return None
        t1, d1 = self.first
        return (self.done - d1) / (now - t1) if now > t1 and self.done > d1 else None

    def line(self, now: float) -> str:
        total = self.total
        parts = [f"{self.done}/{total} {self.unit}" if total else f"{self.done} {self.unit}"]
        if total:
            parts[0] += f" ({100 * self.done / total:.0f}%)"
        r = self.rate(now)
        if r:
            parts.append(f"{r:.3g} {self.unit}/s")
        parts.append(f"{fmt_duration(now - self.t0)} elapsed")
        if total and r and self.done < total:
            parts.append(f"eta {fmt_duration((total - self.done) / r)}")
        return f"{self.description}: " + ", ".join(parts)

    def update(self, done: int, total: int | None = None) -> None:
        now = self.clock()
        if done < self.done:  # a new pass (e.g. the next split of a check): count it afresh
            self.first, self.last_bucket, self.written, self.finished = None, 0, -1, False
        if total is not None:
            self.total = total
        if self.first is None:
            self.first = (now, done)
        self.done = done
        total = self.total
        bucket = int(done / total / self.step + 1e-9) if total else 0
        complete = bool(total) and done >= total
        quiet = now - self.last_line_t < self.min_seconds
        if complete and not self.finished:
            self.finished = True
            if now - self.t0 >= self.min_seconds:
                self._emit(now, bucket)
        elif not complete and not quiet and (bucket > self.last_bucket or now - self.last_line_t >= self.seconds):
            self._emit(now, bucket)

    def _emit(self, now: float, bucket: int) -> None:
        self.write(self.line(now))
        self.last_line_t, self.last_bucket, self.written = now, max(bucket, self.last_bucket), self.done

    def close(self) -> None:
        """A last line for work of unknown total that lasted long enough to have printed progress."""
        now = self.clock()
        if not self.finished and self.first is not None and self.done != self.written and \
                now - self.t0 >= self.min_seconds:
            self.write(self.line(now))


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "images") -> Iterator[Any]:
    """Yields ``update(done, total=None)``: a rich bar on stderr in a terminal, plain log lines
    otherwise (see :func:`progress_mode`)."""
    mode = progress_mode()
    if mode == "log":
        log = LogProgress(description, total, unit)
        yield log.update
        log.close()  # not after an error: the error's own line is the last word
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=mode == "off") as prog:
        task = prog.add_task(escape(description), total=total)

        def update(done: int, total_: int | None = None) -> None:
            prog.update(task, completed=done, total=total_ if total_ is not None else total)

        yield update


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def detail_block(title: str, rows: list[tuple[str, str]]) -> RenderableType:
    """A titled block of ``key  value`` lines; values wrap (URLs fold) at the console's width, never cut."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, escape(str(value)) if value not in (None, "") else "-")
    return Group(f"[bold]{escape(title)}[/bold]", _Indent(grid), "")


class _Indent:
    """Two spaces before a renderable."""

    def __init__(self, inner: RenderableType):
        self.inner = inner

    def __rich_console__(self, console: Console, options: Any) -> Any:
        yield Padding(self.inner, (0, 0, 0, 2))


def per_class_table(record: dict[str, Any], title: str | None = None) -> Table:
    m = record["metrics"]
    t = Table(title=None if title is None else escape(title), show_lines=False, header_style="bold")
    t.add_column("class", overflow="fold")
    for col in ("IoU", "precision", "recall", "FP ratio", "FN ratio"):
        t.add_column(col, justify="right", no_wrap=True)
    for i, name in enumerate(record["classes"]):
        t.add_row(escape(name), pct(m["iou"][i]), pct(m["precision"][i]), pct(m["recall"][i]),
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
            line += f" | native threshold {nat['threshold']:.4g}: mIoU {pct(nat['miou'])}"
        off = record.get("official")
        if off and off.get("miou") is not None:
            line += f" | its official script ({off['script']}) would print mIoU {pct(off['miou'])}"
        lines.append(line)
    return lines


def run_label(r: dict[str, Any]) -> str:
    """A record's row label: its name, and its method and settings when the name does not say them."""
    name = r.get("name") or ""
    method = r.get("method") or r.get("segmenter") or ""
    settings = (r.get("settings") or {}).get("name", "")
    if not method or name == f"{method}-{settings}" or name == method:
        return escape(name or method)
    return f"{escape(name)}\n[dim]{escape(method)}, {escape(settings)}[/dim]" if settings else \
        f"{escape(name)}\n[dim]{escape(method)}[/dim]"


SUMMARY_NOTE = ("best: mIoU at the best sweep threshold t; calibrated: t chosen on a held-out part; "
                "native: at the method's own threshold")
SUMMARY_TITLE = "wsss-bench: pseudo-label quality (mIoU %)"
#: Below this width the summary is one block per run instead of a table.
SUMMARY_MIN_TABLE_WIDTH = 72


def _ranked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["kind"] == "pseudo_label"), key=lambda r: -(r["metrics"]["miou"] or 0))


def _cells(r: dict[str, Any]) -> tuple[str, str, str, str, str]:
    ips = (r.get("timings") or {}).get("images_per_second")
    return (pct(r["metrics"]["miou"]), f"{r['best_threshold']:.2f}" if r.get("best_threshold") is not None else "-",
            pct((r.get("calibrated") or {}).get("miou")), pct((r.get("native") or {}).get("miou")),
            f"{ips:.1f}" if ips else "-")


class SummaryTable:
    """Pseudo-label runs ranked by best mIoU, readable at any width: a table with short headers
    whose run names wrap instead of being cut, and one block per run when narrower than
    :data:`SUMMARY_MIN_TABLE_WIDTH` columns. A run's method and settings show under its name only
    when the name does not say them."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = _ranked(records)

    def table(self) -> Table:
        t = Table(title=SUMMARY_TITLE, caption=SUMMARY_NOTE, header_style="bold", caption_justify="left")
        t.add_column("run", overflow="fold", min_width=12)
        for col in ("best", "t", "calibrated", "native", "images/s"):
            t.add_column(col, justify="right", no_wrap=True)
        for r in self.records:
            t.add_row(run_label(r), *_cells(r))
        return t

    def blocks(self) -> Group:
        lines: list[RenderableType] = [f"[bold]{SUMMARY_TITLE}[/bold]"]
        for i, r in enumerate(self.records, 1):
            best, t, cal, nat, ips = _cells(r)
            lines.append(f"{i}. " + run_label(r).replace("\n", " ").replace("[dim]", "[dim](").replace("[/dim]", ")[/dim]"))
            lines.append(Padding(f"best {best} (t {t}), calibrated {cal}, native {nat}; {ips} images/s", (0, 0, 0, 3)))
        lines.append(SUMMARY_NOTE)
        return Group(*lines)

    def __rich_console__(self, console: Console, options: Any) -> Iterator[RenderableType]:
        yield self.table() if options.max_width >= SUMMARY_MIN_TABLE_WIDTH else self.blocks()


def summary_table(records: list[dict[str, Any]]) -> SummaryTable:
    """The results table of ``run`` and the demo (see :class:`SummaryTable`)."""
    return SummaryTable(records)
