"""Output a user reads: results tables and ``methods`` at 80 columns (nothing cut), progress as plain
log lines when there is no terminal (at a sensible rate, with rate and ETA), and the demo's progress
total known from the start."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from wsss_bench.commands import _ui
from wsss_bench.commands._ui import LogProgress, fmt_duration, progress_mode, summary_table


def render(renderable, width: int = 80) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False).print(renderable)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# log-line progress
# ----------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_log_progress_writes_a_line_every_tenth_with_rate_and_eta():
    clock, lines = FakeClock(), []
    p = LogProgress("cam-native", 1000, write=lines.append, clock=clock)
    clock.t += 20.0  # model loading: not counted in the rate
    p.update(0)
    for done in range(1, 1001):
        clock.t += 0.1  # 10 images/s
        p.update(done)
    assert len(lines) == 10, lines  # 10 %, 20 %, ..., 90 % and the end
    # at 10 %: 100 images done 10 s after the first update -> 10 images/s; 900 left -> 90 s
    assert lines[0] == "cam-native: 100/1000 images (10%), 10 images/s, 0:30 elapsed, eta 1:30"
    assert lines[4] == "cam-native: 500/1000 images (50%), 10 images/s, 1:10 elapsed, eta 0:50"
    assert lines[-1] == "cam-native: 1000/1000 images (100%), 10 images/s, 2:00 elapsed"


def test_log_progress_never_writes_two_lines_within_five_seconds_and_at_least_every_thirty():
    clock, lines = FakeClock(), []
    p = LogProgress("fast", 1000, write=lines.append, clock=clock)
    for done in range(1, 1001):  # 1000 images in 15.6 s: a 10 % step every 1.56 s, a line every 5 s
        clock.t += 1 / 64
        p.update(done)
    assert [ln.split(": ", 1)[1].split(" ")[0] for ln in lines] == ["320/1000", "640/1000", "960/1000", "1000/1000"]
    clock2, slow = FakeClock(), []
    p = LogProgress("slow", 10_000, write=slow.append, clock=clock2)
    for done in range(1, 200):  # 1 image every 1 s: under 2 % in 200 s, yet a line every 30 s
        clock2.t += 1.0
        p.update(done)
    assert len(slow) == 6 and slow[0].startswith("slow: 30/10000 images (0%)"), slow


def test_log_progress_of_short_work_prints_nothing_and_nothing_after_an_error():
    lines: list[str] = []
    clock = FakeClock()
    p = LogProgress("short", 10, write=lines.append, clock=clock)
    for done in range(1, 11):
        clock.t += 0.1
        p.update(done)
    p.close()
    assert lines == []


def test_log_progress_with_unknown_total_and_a_new_pass():
    clock, lines = FakeClock(), []
    p = LogProgress("check", None, unit="files", write=lines.append, clock=clock)
    for done in range(1, 101):
        clock.t += 1.0
        p.update(done)
    p.close()
    assert lines[0] == "check: 30 files, 1 files/s, 0:30 elapsed"
    assert lines[-1] == "check: 100 files, 1 files/s, 1:40 elapsed" and len(lines) == 4
    clock, lines = FakeClock(), []
    p = LogProgress("check", 100, write=lines.append, clock=clock)
    for total in (100, 100):  # two splits: the count starts again at 0 and each pass ends with a line
        for done in range(1, total + 1):
            clock.t += 1.0
            p.update(done, total)
    assert sum(ln.startswith("check: 100/100 images (100%)") for ln in lines) == 2


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 59.6, 73, 3725)] == ["0:00", "1:00", "1:13", "1:02:05"]


def test_progress_mode_is_log_lines_without_a_terminal(monkeypatch):
    monkeypatch.delenv(_ui.PROGRESS_ENV, raising=False)
    assert progress_mode(io.StringIO()) == "log"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_mode(Tty()) == "bar"
    monkeypatch.setenv(_ui.PROGRESS_ENV, "off")
    assert progress_mode(Tty()) == "off"


def test_progress_bar_context_writes_log_lines_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv(_ui.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(_ui, "LOG_MIN_SECONDS", 0.0)
    with _ui.progress_bar("job", 4) as update:
        for i in range(1, 5):
            update(i)
    err = capsys.readouterr().err
    assert "job: 4/4 images (100%)" in err and "\x1b" not in err


# ----------------------------------------------------------------------------------------------
# 80 columns
# ----------------------------------------------------------------------------------------------


def record(name: str, method: str, settings: str, miou: float, ips: float | None = 12.3) -> dict:
    return {"kind": "pseudo_label", "name": name, "method": method, "settings": {"name": settings},
            "metrics": {"miou": miou}, "best_threshold": 0.25, "calibrated": {"miou": miou - 0.01},
            "native": {"miou": miou - 0.02}, "timings": {"images_per_second": ips}}


DEMO_LIKE = [record(f"{m}-{s}", m, s, 0.3 + 0.01 * i)
             for i, (m, s) in enumerate((m, s) for m in ("cam", "edam", "getam", "ad-cam", "more")
                                        for s in ("native", "standard"))] + \
            [record("center-prior", "center-prior", "native", 0.2, None),
             record("my-long-experiment-name-with-ablation", "getam", "standard", 0.41)]


@pytest.mark.parametrize("width", [80, 72, 60, 40])
def test_summary_table_fits_the_width_and_cuts_nothing(width):
    text = render(summary_table(DEMO_LIKE), width)
    lines = text.splitlines()
    assert all(len(ln) <= width for ln in lines), text
    assert "…" not in text and "..." not in text
    if width >= 72:  # a table: the first column, line by line, may fold a name but loses no character
        cells = "".join(ln.split("│")[1].strip() for ln in lines if ln.count("│") >= 2)
        for head in ("best", "calibrated", "native", "images/s"):
            assert head in text
    else:  # one block per run
        cells = "".join(ln.strip() for ln in lines)
        assert "best 41.0 (t 0.25), calibrated 40.0, native 39.0; 12.3 images/s" in " ".join(text.split())
    for r in DEMO_LIKE:
        assert r["name"] in cells, (r["name"], text)
    # the run whose name does not say its method and settings shows them under its name
    assert "getam, standard" in " ".join(text.split())


def test_summary_table_at_80_columns_keeps_every_demo_row_whole():
    text = render(summary_table(DEMO_LIKE), 80)
    for r in DEMO_LIKE[:-1]:
        row = next(ln for ln in text.splitlines() if f" {r['name']} " in ln)
        assert f"{100 * r['metrics']['miou']:.1f}" in row, row


def test_methods_at_80_columns_shows_every_url_whole(monkeypatch, capsys):
    from wsss_bench.commands import run_cmd
    from wsss_bench.methods.registry import installed_methods
    from wsss_bench.segmenters.registry import installed_segmenters

    buf = io.StringIO()
    monkeypatch.setattr(run_cmd, "console", Console(file=buf, width=80, color_system=None))
    run_cmd.methods_command()
    text = buf.getvalue()
    assert all(len(ln) <= 80 for ln in text.splitlines())
    assert "…" not in text
    codes = [c.official_code for c in [*installed_methods().values(), *installed_segmenters().values()]]
    urls = [w.strip("(),") for code in codes for w in code.split() if w.startswith("http")]
    assert len(urls) >= 5
    for url in urls:
        assert url in text, url


def test_run_results_in_a_log_file_at_80_columns(tmp_path):
    """Two runs through the real console script with COLUMNS=80 and output to a file (no terminal):
    progress and results readable, no line wider than 80, nothing cut, no escape codes."""
    from wsss_bench.data.synthetic import generate

    data = generate(tmp_path / "shapes", num_images=8, seed=2, size=(40, 56))
    suite = tmp_path / "suite.toml"
    suite.write_text(f'data_root = "{data}"\nworkers = 0\n[[run]]\nmethod = "center-prior"\n'
                     '[[run]]\nmethod = "center-prior"\nname = "center-prior-wide-sigma-ablation"\n'
                     'hparams = {sigma = 0.5}\n')
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop(_ui.PROGRESS_ENV, None)
    with open(tmp_path / "log.txt", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "wsss_bench", "run", str(suite), "--out", str(tmp_path / "o")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    text = (tmp_path / "log.txt").read_text()
    assert rc == 0, text
    assert "\x1b" not in text and "…" not in text
    assert all(len(ln) <= 80 for ln in text.splitlines()), text
    assert "center-prior-wide-sigma-ablation" in "".join(text.split())
    assert "wsss-bench: pseudo-label quality" in text


# ----------------------------------------------------------------------------------------------
# the demo's progress total is known from the start
# ----------------------------------------------------------------------------------------------


def test_demo_progress_has_its_whole_total_from_the_start(tmp_path, monkeypatch):
    import wsss_bench.inference as inference
    from wsss_bench import demo
    from wsss_bench.data.synthetic import generate
    from wsss_bench.inference import RunConfig, RunResult

    data = generate(tmp_path / "shapes", num_images=12, seed=1, size=(40, 56))
    n_train = len((data / "ImageSets/Segmentation/train.txt").read_text().split())
    runs = [RunConfig(method="center-prior", data_root=str(data), name=f"r{i}", limit=limit)
            for i, limit in enumerate((None, 3, None))]
    calls: list[tuple] = []

    import contextlib

    @contextlib.contextmanager
    def recording_bar(description, total=None, unit="images"):
        calls.append(("start", description, total))
        yield lambda done, total_=None: calls.append(("update", done, total_))

    def fake_run(cfg, progress=None):
        n = min(n_train, cfg.limit) if cfg.limit else n_train
        for i in range(1, n + 1):
            progress(i, n)
        return RunResult({"name": cfg.name}, None, None)

    monkeypatch.setattr(_ui, "progress_bar", recording_bar)
    monkeypatch.setattr(inference, "run_method", fake_run)
    records = demo.execute_runs(runs, jobs=1)
    assert [r["name"] for r in records] == ["r0", "r1", "r2"]
    total = 2 * n_train + 3
    assert calls[0] == ("start", "demo: 3 runs", total)
    done = [c[1] for c in calls[1:]]
    assert done == list(range(1, total + 1))  # never jumps back, ends at the total
    assert all(c[2] is None for c in calls[1:])  # the total is never changed on the way
