"""SIGKILL in the middle of training, then the same command again: it resumes from the last
checkpoint and finishes with exactly the losses and weights of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import child_env, write_test_recipe

from wsss_bench.data.synthetic import generate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    synth = generate(base / "shapes", num_images=12, seed=8, size=(40, 52))
    pseudo = base / "pseudo"
    shutil.copytree(synth / "SegmentationClass", pseudo)
    recipe = write_test_recipe(base / "kill.toml", **{"schedule.iterations": 60, "schedule.checkpoint_every": 5,
                                                      "optimizer.lr": 0.002})
    return synth, pseudo, recipe


def command(synth: Path, pseudo: Path, recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "wsss_bench.training", "--pseudo", str(pseudo), "--dataset", "synthetic",
            "--data-root", str(synth), "--split", "train", "--recipe", str(recipe), "--out", str(out),
            "--device", "cpu", "--workers", "0", "--name", "run"]


def log_iterations(path: Path) -> list[int]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["iteration"])
        except (json.JSONDecodeError, KeyError):
            pass
    return out


def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(setup, tmp_path):
    synth, pseudo, recipe = setup
    out, full = tmp_path / "killed", tmp_path / "full"
    env = child_env()
    proc = subprocess.Popen(command(synth, pseudo, recipe, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(log_iterations(out / "train-log.jsonl")) >= 12:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "finished (or died) before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists() and not (out / "model.safetensors").exists()
    ckpt = torch.load(out / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    at = int(ckpt["iteration"])
    assert at % 5 == 0 and 10 <= at < 60
    assert not [p for p in (out / "checkpoints").iterdir() if p.name != "last.pt"]  # no temporary left
    # the same command again: resumes at the checkpoint, runs to the end
    res = subprocess.run(command(synth, pseudo, recipe, out), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from iteration {at}" in res.stdout
    assert log_iterations(out / "train-log.jsonl") == list(range(1, 61))  # iterations after `at` logged once
    rec = json.loads((out / "run.json").read_text())
    assert rec["training"]["resumed_from"] == [at] and rec["training"]["iterations"] == 60
    # an uninterrupted run: the same losses and weights (same process layout, one thread)
    res = subprocess.run(command(synth, pseudo, recipe, full), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    la = [json.loads(x)["loss"] for x in (full / "train-log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (out / "train-log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in wa:
        np.testing.assert_allclose(wb[k].double().numpy(), wa[k].double().numpy(), rtol=1e-6, atol=1e-7, err_msg=k)
    assert json.loads((full / "run.json").read_text())["metrics"] == rec["metrics"]
