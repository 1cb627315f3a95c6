"""The CPU evaluation path runs on numpy alone: importing it and reading IRN's tensor files, sweeping
and scoring masks never imports torch (1.6 s and 640 MB at start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys
import numpy as np
import wsss_bench.evaluate, wsss_bench.io
from wsss_bench.io import load_cam_file
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.official import official_miou
from wsss_bench.metrics.sweep import SweepEvaluator
classes, scores = load_cam_file(sys.argv[1])
gt = np.zeros(scores.shape[1:], np.uint8)
gt[1:3] = classes[0]
ev = SweepEvaluator(21, native_rule=("power", 32))
ev.update(scores, classes, gt, image_id="a")
r = ev.results()
ce = ConfusionEvaluator(21)
ce.update(gt, gt)
official_miou("irn", ev.native_confusion(with_ignore=True))
assert "torch" not in sys.modules, "torch was imported"
print("ok", classes.tolist())
"""


def test_numpy_evaluation_path_does_not_import_torch(tmp_path):
    p = tmp_path / "x.npy"
    hr = np.random.default_rng(0).random((2, 6, 7)).astype(np.float32)
    np.save(p, {"keys": torch.tensor([3, 9]), "cam": torch.from_numpy(hr[:, ::2, ::2].copy()), "high_res": hr})
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(p)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok [4, 10]"
