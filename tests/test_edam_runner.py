"""EDAM through the runner: native multi-scale fusion vs a hand-written loop, and `wsss-bench run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edam_official_layout import edam_released_keys
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.base import Sample
from wsss_bench.data.synthetic import generate
from wsss_bench.inference import compute_maps
from wsss_bench.methods.edam import EDAMAdapter

TINY = "resnet38-w0.0625"  # every channel count / 16


def _tiny_released_checkpoint(path, num_classes: int = 5, seed: int = 0):
    """A random checkpoint in EDAM's released layout (training-only keys included) at width 1/16."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in edam_released_keys(div=16, n_channels=num_classes + 1):
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(s, generator=g)
        elif k.endswith(("running_mean", ".bias")) or ".bn" in k:
            state[k] = 0.1 * torch.randn(s, generator=g) + (1.0 if ".bn" in k and k.endswith(".weight") else 0.0)
        else:
            fan_in = max(1, int(np.prod(s[1:]))) if len(s) > 1 else 1
            state[k] = torch.randn(s, generator=g) * (2.0 / fan_in) ** 0.5
    torch.save(state, path)
    return path


def test_native_fusion_equals_hand_written_loop(tmp_path):
    adapter = EDAMAdapter(num_classes=5, backbone=TINY)
    adapter.load_checkpoint(str(_tiny_released_checkpoint(tmp_path / "edam.pth")))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1], np.float32)
    (got,) = compute_maps(adapter, [Sample("x", image, labels, None)], adapter.native, torch.device("cpu"), "fp32")

    # EDAM infer_cls.py, one view at a time: scales 1, 0.5, 1.5, 2 (rounded sizes), image and its
    # flip, each map upsampled bilinearly to the image size, the flip's flipped back, all summed,
    # each class divided by its max (no epsilon). The rescale is Pillow's bicubic (voc12/data.py).
    classes = torch.tensor([1, 3, 4])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    total = torch.zeros(3, 37, 50)
    with torch.no_grad():
        for s in (1.0, 0.5, 1.5, 2.0):
            size = (int(round(37 * s)), int(round(50 * s)))
            pil = Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC)
            x = (torch.from_numpy(np.asarray(pil)).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
            for flipped in (False, True):
                view = x.flip(-1) if flipped else x
                m = adapter.forward_maps(view, classes)
                m = F.interpolate(m, size=(37, 50), mode="bilinear", align_corners=False)[0]
                total += m.flip(-1) if flipped else m
    expected = total / total.amax(dim=(1, 2), keepdim=True)
    assert got.shape == (3, 37, 50)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.amax(dim=(1, 2)), torch.ones(3))


def test_wsss_bench_run_on_synthetic_with_a_narrow_random_network(tmp_path):
    data = generate(tmp_path / "shapes", num_images=4, seed=1, size=(32, 40))
    ckpt = _tiny_released_checkpoint(tmp_path / "edam_tiny.pth")
    out = tmp_path / "out"
    rc = main(["run", "--method", "edam", "--backbone", TINY, "--checkpoint", str(ckpt),
               "--data-root", str(data), "--out", str(out), "--workers", "0", "--device", "cpu",
               "--hparam", "theta=0.45"])
    assert rc == 0
    (path,) = list(out.glob("edam-*.json"))
    rec = json.loads(path.read_text())
    assert rec["method"] == "edam" and rec["backbone"] == TINY
    s = rec["settings"]
    assert s["scales"] == [1.0, 0.5, 1.5, 2.0] and s["flip"] is True and s["flip_fusion"] == "sum" and s["resize"] == "pil-bicubic"
    assert s["normalization"] == "max" and s["eps"] == 0.0
    assert s["background"]["value"] == pytest.approx(0.45)
    assert len(rec["sweep"]["miou"]) == 100 and rec["num_images"] > 0
