"""Starting the command line stays light: ``--help`` and the help of commands that load no model
import neither torch nor the command modules they do not need (each case in a fresh interpreter).
Timing is measured outside the tests (see the README's performance notes); this pins the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import contextlib, io, json, sys
from wsss_bench.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
mods = [m for m in ("torch", "numpy", "pandas", "matplotlib", "wsss_bench.inference", "wsss_bench.data",
                    "wsss_bench.commands.run_cmd", "wsss_bench.commands.eval_cmd",
                    "wsss_bench.commands.report_cmd", "wsss_bench.commands.datasets_cmd") if m in sys.modules]
print(json.dumps({"rc": rc, "modules": mods}))
"""


def loaded_after(argv: list[str]) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return got["rc"], got["modules"]


def test_root_help_imports_no_command_module_and_no_torch():
    rc, mods = loaded_after(["--help"])
    assert rc == 0 and mods == [], mods


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["methods", "--help"], ["leaderboard", "--help"], ["compare", "--help"],
    ["export-voc-test", "--help"], ["datasets", "check", "--help"], ["demo", "train", "--help"],
    ["eval", "--help"], ["train-seg", "--help"],
], ids=" ".join)
def test_command_help_imports_no_torch(argv):
    rc, mods = loaded_after(argv)
    assert rc == 0
    assert "torch" not in mods and "wsss_bench.inference" not in mods, mods


def test_a_command_imports_only_its_own_module():
    _, mods = loaded_after(["compare", "--help"])
    assert "wsss_bench.commands.report_cmd" in mods
    assert "wsss_bench.commands.run_cmd" not in mods and "wsss_bench.commands.datasets_cmd" not in mods


def test_usage_error_imports_no_torch():
    rc, mods = loaded_after(["run", "--metod", "cam"])
    assert rc == 2 and "torch" not in mods
