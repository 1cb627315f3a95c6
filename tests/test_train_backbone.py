"""The tiny recipe's packaged initial weights: the shipped file is the one its manifest names, loads
strictly into the tiny segmenter's backbone, and the script that made it is deterministic (a short run,
twice, gives byte-identical weights)."""

from __future__ import annotations

import json

import pytest
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import sha256_file
from wsss_bench.training import load_recipe
from wsss_bench.training.backbone import (
    FILE,
    MANIFEST,
    build_backbone,
    packaged_init,
    tiny_segmenter,
    weights_dir,
)
from wsss_bench.training.init import load_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shipped_backbone_matches_its_manifest_and_loads_strictly():
    r = load_recipe("tiny-synthetic")
    assert r.init_file == FILE
    path = packaged_init(r.init_file)
    man = json.loads((weights_dir() / MANIFEST).read_text())
    assert man["sha256"] == sha256_file(path) and man["file"] == FILE
    assert path.stat().st_size < 1_000_000
    assert man["command"].startswith("python -m wsss_bench.training.backbone") and man["seed"] == 0
    seg = tiny_segmenter()
    seg.build()
    before = {k: v.clone() for k, v in seg.model.state_dict().items()}
    info = load_init(seg, str(path))
    assert info["sha256"] == man["sha256"]
    after = seg.model.state_dict()
    changed = {k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("aspp.") for k in changed)  # the backbone, never the head


def test_unknown_packaged_weights_are_one_line_errors():
    for name in ("nope.safetensors", "../weights/x.safetensors"):
        with pytest.raises(WsssBenchError, match="not found"):
            packaged_init(name)


def test_pretraining_is_deterministic(tmp_path):
    a = build_backbone(tmp_path / "a", seed=3, steps=3, data_dir=tmp_path / "data", num_images=24)
    b = build_backbone(tmp_path / "b", seed=3, steps=3, data_dir=tmp_path / "data", num_images=24)
    assert a.read_bytes() == b.read_bytes()
    man = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert man["steps"] == 3 and man["sha256"] == sha256_file(a) and "--images 24" in man["command"]
    c = build_backbone(tmp_path / "c", seed=4, steps=3, data_dir=tmp_path / "data", num_images=24)
    assert c.read_bytes() != a.read_bytes()
