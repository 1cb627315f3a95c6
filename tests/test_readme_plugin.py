"""The plug-in example (docs/plugins.md, linked from the README), kept true: its files are written out
of the document, installed into a throwaway environment and run with the document's own commands.

The environment is a venv on this interpreter that sees this interpreter's packages (torch,
wsss-bench) through a ``.pth`` file, so nothing is downloaded or reinstalled; the plug-in is
installed with ``pip install --no-deps --no-build-isolation``, offline.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from wsss_bench.records import read_record

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.S | re.M)


def readme_section() -> str:
    return (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")


def readme_files(section: str) -> dict[str, str]:
    return {path: body for _, path, body in FENCE.findall(section)}


def readme_commands(section: str) -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, re.S | re.M)
    assert len(blocks) == 1, "the plug-in section has one bash block of commands"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_names_every_file_of_the_package():
    files = readme_files(readme_section())
    assert sorted(files) == ["my-method/my_method/adapter.py", "my-method/my_method/net.py",
                             "my-method/pyproject.toml"]
    assert "[build-system]" in files["my-method/pyproject.toml"]
    assert "[project]" in files["my-method/pyproject.toml"]
    assert '[project.entry-points."wsss_bench.methods"]' in files["my-method/pyproject.toml"]


def make_env(root: Path) -> Path:
    """A venv on this interpreter whose site-packages add this interpreter's (no pip of its own:
    this interpreter's pip and setuptools are used, offline)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    parents = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    lines = "; ".join(f"site.addsitedir({p!r})" for p in dict.fromkeys(parents))
    (Path(purelib) / "_parent_site.pth").write_text(f"import site; {lines}\n")
    return py


def test_the_readme_plugin_installs_lists_and_runs_with_and_without_a_checkpoint(tmp_path):
    section = readme_section()
    for rel, body in readme_files(section).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body, encoding="utf-8")
    py = make_env(tmp_path)
    probe = subprocess.run([str(py), "-c", "import setuptools, pip; print(setuptools.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"pip or setuptools is not importable here, so nothing can be installed offline: {probe.stderr}")
    if int(probe.stdout.split(".")[0]) < 64:
        pytest.skip(f"setuptools {probe.stdout.strip()} cannot make editable installs (needs 64)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1",
               COLUMNS="100")

    def run(args: list[str]) -> str:
        res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{shlex.join(args)}\n{res.stdout}\n{res.stderr}"
        return res.stdout

    outputs = {}
    for line in readme_commands(section):
        words = shlex.split(line)
        if words[:3] == ["pip", "install", "-e"]:
            args = [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", *words[2:]]
        else:
            assert words[0] == "wsss-bench", line
            args = [str(py), "-m", "wsss_bench", *words[1:]]
        if "--checkpoint" in words:  # the trained weights the README speaks of: here a seeded random network
            run([str(py), "-c", "import torch; from my_method.net import TinyCAMNet; torch.manual_seed(1); "
                 "torch.save(TinyCAMNet(num_classes=5).state_dict(), 'my-net.pth')"])
        outputs[line] = run(args)

    listing = next(out for line, out in outputs.items() if line.split()[:2] == ["wsss-bench", "methods"])
    assert re.search(r"^my-method$", listing, re.M), listing
    assert "Me et al., 2026" in listing

    native = read_record(tmp_path / "records" / "my-method-native.json")
    standard = read_record(tmp_path / "records" / "my-method-standard.json")
    for rec in (native, standard):
        assert rec["method"] == "my-method" and rec["kind"] == "pseudo_label"
        assert rec["dataset"] == "synthetic" and rec["num_images"] == 30  # 40 images, every 4th in val
        assert len(rec["sweep"]["miou"]) == 100
    assert native["checkpoint_sha256"] is None
    assert native["settings"]["scales"] == [1.0, 0.5, 1.5]
    assert standard["checkpoint_sha256"] == hashlib.sha256((tmp_path / "my-net.pth").read_bytes()).hexdigest()
    assert standard["settings"]["name"] == "standard"
