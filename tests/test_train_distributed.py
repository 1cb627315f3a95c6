"""Two gloo ranks under torchrun and one process, same recipe (global batch 4 = 2 ranks x 1
micro-batch of 2, or 1 rank x 2 micro-batches of 2) and seed: the same losses, the same weights and
the same record, to float tolerance.

What may differ is only the order of float sums: the gradient of the two micro-batches is added up
by accumulation in one process and by the all-reduce across two; batch-norm running statistics are
summed the same way (:class:`~wsss_bench.training.objective.BNStatSync`). The tolerances below are
those float differences after a few iterations, far below what any change of samples, augmentation
or batch statistics would produce (the per-iteration losses differ by 10-50% between seeds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from train_helpers import child_env, free_port, torchrun, write_test_recipe

from wsss_bench.data.synthetic import generate

#: |difference| of the recorded val mIoU and of every per-class IoU between the two runs
RECORD_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    synth = generate(base / "shapes", num_images=12, seed=6, size=(40, 52))
    pseudo = base / "pseudo"
    shutil.copytree(synth / "SegmentationClass", pseudo)
    # trained batch norms (their statistics synchronised) and the multi-scale loss inside DDP
    recipe = write_test_recipe(base / "dist.toml", **{"optimizer.lr": 0.002, "loss.type": "msc",
                                                      "loss.msc_scales": [0.75, 0.5]})
    return synth, pseudo, recipe


def cmd_args(synth: Path, pseudo: Path, recipe: Path, out: Path) -> list[str]:
    return ["--pseudo", str(pseudo), "--dataset", "synthetic", "--data-root", str(synth), "--split", "train",
            "--recipe", str(recipe), "--out", str(out), "--device", "cpu", "--workers", "0", "--name", "run"]


def test_two_gloo_ranks_equal_one_process(setup, tmp_path):
    synth, pseudo, recipe = setup
    one, two = tmp_path / "one", tmp_path / "two"
    env = child_env()
    p1 = subprocess.run([sys.executable, "-m", "wsss_bench.training", *cmd_args(synth, pseudo, recipe, one)],
                        env=env, capture_output=True, text=True, timeout=300)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([*torchrun(), "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "2",
                         "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                         "-m", "wsss_bench.training", *cmd_args(synth, pseudo, recipe, two)],
                        env=env, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]

    a = json.loads((one / "run.json").read_text())
    b = json.loads((two / "run.json").read_text())
    assert (a["training"]["world_size"], b["training"]["world_size"]) == (1, 2)
    assert (a["training"]["accumulation"], b["training"]["accumulation"]) == (2, 1)
    assert a["training"]["global_batch"] == b["training"]["global_batch"] == 4
    la = [json.loads(x) for x in (one / "train-log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "train-log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in la] == [e["iteration"] for e in lb] == list(range(1, 7))
    np.testing.assert_allclose([e["loss"] for e in lb], [e["loss"] for e in la], rtol=1e-5)
    assert [e["lr"] for e in lb] == [e["lr"] for e in la]
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert sorted(wa) == sorted(wb)
    for k in wa:  # weights, and the batch norms' running statistics and counters
        np.testing.assert_allclose(wb[k].double().numpy(), wa[k].double().numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    assert abs(a["metrics"]["miou"] - b["metrics"]["miou"]) <= RECORD_TOLERANCE
    for x, y in zip(a["metrics"]["iou"], b["metrics"]["iou"], strict=True):
        assert (x is None and y is None) or abs(x - y) <= RECORD_TOLERANCE
    for key in ("fingerprint", "num_images", "classes", "settings", "pipeline"):
        assert a[key] == b[key], key
    # rank 0 alone wrote: one record, one log, one checkpoint
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
