"""The inference runner and the CAM baseline: plain timm layout, plug-ins, resume, pseudo labels (IRN's
layout and maps: tests/test_fidelity_cam.py)."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from cam_helpers import write_tiny_cam_checkpoint
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.classes import voc_palette
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import RunConfig, run_method
from wsss_bench.inference.pseudo import hard_label
from wsss_bench.methods.cam import CAMAdapter


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "shapes", num_images=16, seed=3, size=(40, 56))


@pytest.fixture(scope="module")
def tiny_cam_ckpt(tmp_path_factory):
    return write_tiny_cam_checkpoint(tmp_path_factory.mktemp("ckpt") / "cam_tiny.pth", seed=0)


def test_cam_loads_plain_timm_layout_and_lists_mismatches(tmp_path):
    a = CAMAdapter(5, backbone="resnet-tiny")
    a.build()
    plain = {k: v for k, v in a.model.backbone.state_dict().items()}
    plain["fc.weight"] = torch.zeros(1000, 128)
    plain["classifier.weight"] = torch.zeros(5, 128, 1, 1)
    p = tmp_path / "timm.pth"
    torch.save(plain, p)
    CAMAdapter(5, backbone="resnet-tiny").load_checkpoint(str(p))
    bad = dict(plain)
    bad.pop("layer1.0.conv1.weight")
    bad["classifier.weight"] = torch.zeros(5, 64, 1, 1)
    torch.save(bad, p)
    with pytest.raises(WsssBenchError) as e:
        CAMAdapter(5, backbone="resnet-tiny").load_checkpoint(str(p))
    msg = str(e.value)
    assert "timm.pth" in msg and "backbone.layer1.0.conv1.weight" in msg and "classifier.weight" in msg


def test_end_to_end_on_synthetic_with_pseudo_labels(synth, tiny_cam_ckpt, tmp_path):
    out, pseudo = tmp_path / "out", tmp_path / "pseudo"
    rc = main(["run", "--method", "cam", "--backbone", "resnet-tiny", "--checkpoint", str(tiny_cam_ckpt),
               "--data-root", str(synth), "--out", str(out), "--workers", "0", "--save-pseudo", str(pseudo),
               "--ignore-band", "0.3,0.4"])
    assert rc == 0
    rec = json.loads((out / "cam-native.json").read_text())
    assert rec["kind"] == "pseudo_label" and rec["method"] == "cam" and rec["backbone"] == "resnet-tiny"
    assert len(rec["sweep"]["miou"]) == 100 and rec["checkpoint_sha256"]
    assert rec["timings"]["images_per_second"] > 0
    assert rec["settings"]["name"] == "native" and rec["settings"]["scales"] == [1.0, 0.5, 1.5, 2.0]
    ids = (synth / "ImageSets/Segmentation/train.txt").read_text().split()
    assert rec["num_images"] == len(ids)
    for i in ids:
        with Image.open(pseudo / f"{i}.png") as im:
            assert im.mode == "P"
            assert np.array_equal(np.array(im.getpalette()[:63]).reshape(21, 3), voc_palette()[:21])
            with Image.open(synth / "JPEGImages" / f"{i}.jpg") as src:
                assert im.size == src.size


def test_pseudo_labels_agree_with_the_record_threshold(synth, tiny_cam_ckpt, tmp_path):
    """The saved pseudo labels, scored by the confusion evaluator, give the record's mIoU."""
    from wsss_bench.data import build_dataset
    from wsss_bench.evaluate import GroundTruth, eval_predictions

    res = run_method(RunConfig(method="cam", backbone="resnet-tiny", checkpoint=str(tiny_cam_ckpt),
                               data_root=str(synth), out=str(tmp_path / "o"), save_pseudo=str(tmp_path / "p")))
    rec, _ = eval_predictions(tmp_path / "p", GroundTruth.from_dataset(build_dataset("synthetic", synth, "train")))
    assert rec["metrics"]["miou"] == pytest.approx(res.record["metrics"]["miou"], abs=1e-12)
    # the provenance train-seg reads: the record's name, threshold and the PNGs' own mIoU
    prov = json.loads((tmp_path / "p" / "wsss-bench-pseudo.json").read_text())
    assert prov["record"] == res.record["name"] and prov["method"] == "cam"
    assert prov["threshold_rule"] == "best" and prov["threshold"] == res.record["best_threshold"]
    assert prov["labels_miou"] == pytest.approx(rec["metrics"]["miou"], abs=1e-12)
    assert prov["fingerprint"] == res.record["fingerprint"] == rec["fingerprint"]
    assert res.record["pseudo_threshold_rule"] == "best" and res.record["pseudo_labels_miou"] == prov["labels_miou"]


def test_native_pseudo_labels_use_the_exact_power_rule(synth, tmp_path):
    """Native pseudo labels: under GETAM's power rule a pixel is foreground exactly where
    m > (1 - m) ** 32 (not at the 0.08 grid point, ties to background); a ``--threshold native`` run
    records its rule and the PNGs' own mIoU."""
    from wsss_bench.data import build_dataset
    from wsss_bench.evaluate import GroundTruth, eval_predictions
    from wsss_bench.methods.base import Background

    maps = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(0))
    maps[:, 0, 0], maps[:, 0, 1] = 0.075, 0.079  # either side of t* = 0.0770 (the 0.08 grid point would
    got = hard_label(maps, np.array([2, 5]), ("power", 32.0))
    m, k = maps.max(dim=0)
    want = np.where((m > (1 - m) ** 32).numpy(), np.array([2, 5])[k.numpy()], 0)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 0 and got[0, 1] == 2  # label both background
    assert Background("power", 32).threshold() == pytest.approx(0.0770, abs=1e-4)
    res = run_method(RunConfig(method="center-prior", data_root=str(synth), out=str(tmp_path / "o"),
                               save_pseudo=str(tmp_path / "p"), threshold="native"))
    rec, _ = eval_predictions(tmp_path / "p", GroundTruth.from_dataset(build_dataset("synthetic", synth, "train")))
    assert res.record["pseudo_labels_miou"] == pytest.approx(rec["metrics"]["miou"], abs=1e-12)
    assert res.record["pseudo_rule"] == {"rule": "constant", "value": 0.5}


def test_interrupted_run_resumes_to_the_same_record(synth, tiny_cam_ckpt, tmp_path):
    base = dict(method="cam", backbone="resnet-tiny", checkpoint=str(tiny_cam_ckpt), data_root=str(synth))
    full = run_method(RunConfig(**base, out=str(tmp_path / "a"))).record
    cache = tmp_path / "cache"
    part = run_method(RunConfig(**base, out=str(tmp_path / "b"), save_cams=str(cache), limit=5)).record
    assert part["num_images"] == 5 and len(list(cache.glob("*.npz"))) == 5
    resumed = run_method(RunConfig(**base, out=str(tmp_path / "b"), save_cams=str(cache))).record
    assert resumed["cache"]["cached"] == 5 and resumed["cache"]["computed"] == full["num_images"] - 5
    for key in ("metrics", "sweep", "best_threshold", "calibrated", "native", "fingerprint"):
        assert resumed[key] == full[key], key
    # a cache made with other settings is refused
    with pytest.raises(WsssBenchError, match="different run"):
        run_method(RunConfig(**base, out=str(tmp_path / "c"), save_cams=str(cache), settings="standard", scales=(1.0,)))


def test_cache_of_another_copy_of_the_dataset_is_refused(synth, tiny_cam_ckpt, tmp_path):
    """Entries are keyed by image id; a copy of the dataset with the same ids but other pixels must not
    be served the first copy's maps."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    base = dict(method="cam", backbone="resnet-tiny", checkpoint=str(tiny_cam_ckpt), limit=3)
    cache = tmp_path / "cache"
    run_method(RunConfig(**base, data_root=str(synth), out=str(tmp_path / "a"), save_cams=str(cache)))
    with pytest.raises(WsssBenchError, match="data_root differ") as err:
        run_method(RunConfig(**base, data_root=str(copy), out=str(tmp_path / "b"), save_cams=str(cache)))
    assert "wsss-bench-cache.json" in str(err.value)
    # the same folder named by another (relative) path is the same dataset
    rel = os.path.relpath(synth)
    again = run_method(RunConfig(**base, data_root=rel, out=str(tmp_path / "c"), save_cams=str(cache))).record
    assert again["cache"]["cached"] == 3


def test_batched_images_give_the_same_maps_as_single(synth, tiny_cam_ckpt, tmp_path):
    base = dict(method="cam", backbone="resnet-tiny", checkpoint=str(tiny_cam_ckpt), data_root=str(synth))
    one = run_method(RunConfig(**base, out=str(tmp_path / "a"), batch_size=1, save_cams=str(tmp_path / "c1")))
    many = run_method(RunConfig(**base, out=str(tmp_path / "b"), batch_size=4, save_cams=str(tmp_path / "c4")))
    for p in (tmp_path / "c1").glob("*.npz"):
        a, b = np.load(p), np.load(tmp_path / "c4" / p.name)
        np.testing.assert_array_equal(a["classes"], b["classes"])
        np.testing.assert_allclose(a["scores"].astype(np.float32), b["scores"].astype(np.float32), atol=2e-3)
    assert many.record["metrics"]["miou"] == pytest.approx(one.record["metrics"]["miou"], abs=0.02)


def test_third_party_plugin_runs_through_the_cli(synth, tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "toy_wsss").mkdir(parents=True)
    (pkg / "toy_wsss" / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from wsss_bench.methods.base import MethodAdapter, InferenceSettings

        class ToyAdapter(MethodAdapter):
            """Maps = the red channel, for every class."""
            name = "toy"
            needs_checkpoint = False
            native = InferenceSettings(scales=(1.0,), flip=False)

            def build(self):
                self.model = torch.nn.Identity()
                return self.model

            def forward_maps(self, views, classes):
                red = views[:, :1].clamp(min=0)
                return red.expand(-1, classes.numel(), -1, -1)
    '''))
    dist = pkg / "toy_wsss-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-wsss\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[wsss_bench.methods]\ntoy = toy_wsss:ToyAdapter\n"
                                           "broken = toy_wsss_missing:Nope\n")
    monkeypatch.syspath_prepend(str(pkg))
    rc = main(["run", "--method", "toy", "--data-root", str(synth), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert rc == 0
    rec = json.loads((tmp_path / "o" / "toy-native.json").read_text())
    assert rec["method"] == "toy" and len(rec["sweep"]["miou"]) == 100
    # the broken plug-in is a warning in `methods`, an error naming it when asked for
    with pytest.warns(RuntimeWarning, match="broken"):
        from wsss_bench.methods.registry import installed_methods

        assert "toy" in installed_methods()
    with pytest.raises(WsssBenchError, match="broken"):
        from wsss_bench.methods.registry import load_method

        load_method("broken")
    assert "toy_wsss" in sys.modules


def test_unknown_method_and_missing_checkpoint_are_one_line_errors(synth, tmp_path, capsys):
    assert main(["run", "--method", "nope", "--data-root", str(synth), "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["run", "--method", "cam", "--data-root", str(synth), "--out", str(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
