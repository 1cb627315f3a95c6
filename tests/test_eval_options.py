"""`wsss-bench eval` options: --num-thresholds (and its deprecated spelling), choice enums that agree
with the modules acting on them, a light --help, and the default number of reader processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsss_bench import evaluate
from wsss_bench.cli import main
from wsss_bench.commands import _options
from wsss_bench.data.classes import voc_palette
from wsss_bench.io import NORMALIZE_MODES, save_cam_file, write_index_png
from wsss_bench.metrics.confusion import UNLABELLED_MODES
from wsss_bench.metrics.official import SCRIPTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(3)
    gt, cams = tmp_path / "gt", tmp_path / "cams"
    cams.mkdir()
    for i in range(4):
        m = np.zeros((10, 12), np.uint8)
        c = int(rng.integers(1, 21))
        m[2:7, 3:9] = c
        m[0, :] = 255
        write_index_png(gt / f"im{i}.png", m, voc_palette())
        save_cam_file(cams / f"im{i}.npz", np.array([c]), rng.random((1, 10, 12)).astype(np.float32), "float32")
    return gt, cams


def _record(out: Path) -> dict:
    return json.loads(next(out.glob("*.json")).read_text())


def test_num_thresholds_sets_the_sweep_size(tmp_path, folders):
    gt, cams = folders
    assert main(["eval", "--cams", str(cams), "--gt", str(gt), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--num-thresholds", "20"]) == 0
    rec = _record(tmp_path / "o")
    assert rec["num_thresholds"] == 20 and len(rec["sweep"]["miou"]) == 20


def test_deprecated_thresholds_spelling_still_works_with_a_warning(tmp_path, folders, capsys):
    gt, cams = folders
    assert main(["eval", "--cams", str(cams), "--gt", str(gt), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--thresholds", "20"]) == 0
    assert "--thresholds is deprecated; use --num-thresholds" in capsys.readouterr().err
    assert _record(tmp_path / "o")["num_thresholds"] == 20


def test_num_thresholds_is_refused_with_pred(tmp_path, folders, capsys):
    gt, _ = folders
    assert main(["eval", "--pred", str(gt), "--gt", str(gt), "--num-thresholds", "20"]) == 2
    assert "--num-thresholds applies to --cams" in capsys.readouterr().err


def test_unlabelled_choice_error_lists_the_values(tmp_path, folders, capsys):
    gt, _ = folders
    assert main(["eval", "--pred", str(gt), "--gt", str(gt), "--unlabelled", "nosuch"]) == 2
    assert "'fn', 'exclude'" in capsys.readouterr().err


def test_choice_enums_agree_with_the_modules():
    assert tuple(m.value for m in _options.OfficialScript) == SCRIPTS
    assert tuple(m.value for m in _options.Normalize) == NORMALIZE_MODES
    assert tuple(m.value for m in _options.Unlabelled) == UNLABELLED_MODES
    assert tuple(m.value for m in _options.LabelSource) == evaluate.LABEL_SOURCES


def test_help_lists_num_thresholds_hides_the_old_spelling_and_imports_no_torch():
    code = ("import contextlib, io, json, sys\nfrom wsss_bench.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    rc = main(['eval', '--help'])\n"
            "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'torch': 'torch' in sys.modules}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and got["torch"] is False
    assert "--num-thresholds" in got["out"] and "--thresholds " not in got["out"]
    for value in ("irn", "edam", "toco", "minmax", "exclude"):
        assert value in got["out"], value


# -- reader processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("cores,busy,images,expected", [
    (2, 0.0, 1000, 2),     # quiet two-core machine: one reader a core
    (2, 0.4, 1000, 2),
    (2, 1.0, 1000, 0),     # one core taken: readers would only compete, read here
    (2, 2.0, 1000, 0),     # two CPU-bound processes beside it
    (2, 12.0, 1000, 0),
    (8, 3.0, 1000, 5),     # five idle cores
    (8, 0.0, 1000, 8),     # never more readers than cores
    (8, 0.0, 10, 0),       # a handful of images: no process start-up
    (1, 0.0, 1000, 0),
])
def test_default_workers_uses_idle_cores_only(monkeypatch, cores, busy, images, expected):
    monkeypatch.setattr(evaluate, "available_cores", lambda: cores)
    assert evaluate.default_workers(images, busy=busy) == expected


def test_busy_cores_is_a_finite_share_of_this_process_cores():
    b = evaluate.busy_cores()
    assert np.isfinite(b) and b >= 0
    cores = len(os.sched_getaffinity(0))
    assert 0 <= evaluate.default_workers(1000) <= cores
