"""The inference runner and the CAM baseline: IRN layout, plug-ins, resume, pseudo labels."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from cam_helpers import write_tiny_cam_checkpoint
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.classes import voc_palette
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import RunConfig, run_method
from wsss_bench.methods.cam import CAMAdapter


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "shapes", num_images=16, seed=3, size=(40, 56))


@pytest.fixture(scope="module")
def tiny_cam_ckpt(tmp_path_factory):
    return write_tiny_cam_checkpoint(tmp_path_factory.mktemp("ckpt") / "cam_tiny.pth", seed=0)


def irn_state_dict(num_classes: int = 20) -> dict[str, torch.Tensor]:
    """A state dict in IRN's exact layout for resnet50_cam.Net, built from torchvision's ResNet-50
    names (an independent library) and IRN's module structure (jiwoon-ahn/irn net/resnet50_cam.py):
    resnet50.* plus the same tensors under stage1..4, backbone.<i> and newly_added.0."""
    g = torch.Generator().manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    state: dict[str, torch.Tensor] = {}
    for k, v in tv.items():
        if k.startswith("fc."):
            continue  # IRN's ResNet has no fc
        if v.dtype.is_floating_point:
            if k.endswith("running_var"):
                v = torch.rand(v.shape, generator=g) + 0.5
            elif "bn" in k or "downsample.1" in k:
                v = torch.randn(v.shape, generator=g) * 0.1 + (1.0 if k.endswith("weight") else 0.0)
            else:
                v = torch.randn(v.shape, generator=g) * (2.0 / max(1, v[0].numel())) ** 0.5
        state[f"resnet50.{k}"] = v
    # stage1 = Sequential(conv1, bn1, relu, maxpool, layer1); stage2..4 = Sequential(layerN)
    dup: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = k[len("resnet50."):]
        if k.startswith("conv1."):
            dup["stage1.0." + k[6:]] = v
        elif k.startswith("bn1."):
            dup["stage1.1." + k[4:]] = v
        elif k.startswith("layer1."):
            dup["stage1.4." + k[7:]] = v
        else:
            n = int(k[5])
            dup[f"stage{n}.0." + k[7:]] = v
    state.update(dup)
    for k, v in dup.items():  # backbone = ModuleList([stage1, ..., stage4])
        n = int(k[5])
        state[f"backbone.{n - 1}." + k[7:]] = v
    w = torch.randn(num_classes, 2048, 1, 1, generator=g) * 0.05
    state["classifier.weight"] = w
    state["newly_added.0.weight"] = w
    return state


def _pil_rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """IRN ``misc/imutils.py`` ``pil_rescale``: Pillow bicubic to (round(h * s), round(w * s))."""
    h, w = image.shape[:2]
    size = (int(np.round(h * scale)), int(np.round(w * scale)))
    if size == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))


def reference_cam(image: np.ndarray, state: dict[str, torch.Tensor], classes: list[int]) -> torch.Tensor:
    """IRN's ``make_cam.py`` written independently on torchvision's ResNet-50 (layer4 stride 1): per
    scale the Pillow-rescaled image and its flip, relu(conv(features, W)), the flip's map flipped back
    and added at the strided resolution (``resnet50_cam.CAM``), upsampled to the image size rounded up
    to a multiple of 16, summed over scales, cropped, divided by max + 1e-5."""
    net = torchvision.models.resnet50(weights=None)
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    net.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("resnet50.")}, strict=False)
    net.eval()
    body = torch.nn.Sequential(*list(net.children())[:-2])
    W = state["classifier.weight"][classes]
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    H, Wd = image.shape[:2]
    up = ((H - 1) // 16 * 16 + 16, (Wd - 1) // 16 * 16 + 16)
    total = torch.zeros(len(classes), *up)
    with torch.no_grad():
        for s in (1.0, 0.5, 1.5, 2.0):
            x = ((_pil_rescale(image, s) / 255.0 - mean) / std).astype(np.float32)
            x = torch.from_numpy(x).permute(2, 0, 1)[None]
            x = torch.cat([x, x.flip(-1)])
            cam = F.relu(F.conv2d(body(x), W))
            cam = cam[0] + cam[1].flip(-1)
            total += F.interpolate(cam[:, None], up, mode="bilinear", align_corners=False)[:, 0]
    total = total[:, :H, :Wd]
    return total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)


def test_irn_checkpoint_loads_and_cam_matches_independent_computation(tmp_path):
    from wsss_bench.inference import compute_maps
    from wsss_bench.methods.base import STANDARD_SETTINGS

    state = irn_state_dict()
    p = tmp_path / "res50_cam.pth"
    torch.save(state, p)
    a = CAMAdapter(20)
    sha = a.load_checkpoint(str(p))
    assert len(sha) == 64
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)

    class S:  # a Sample with two classes
        id = "x"
        labels = np.zeros(20, np.float32)

    S.image = image
    S.labels[[2, 14]] = 1
    got = compute_maps(a, [S], a.native, torch.device("cpu"), "fp32")[0]
    ref = reference_cam(image, state, [2, 14])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert a.native.scales == STANDARD_SETTINGS.scales and a.native.background.value == 0.15
    assert a.native.upsample == "stride-padded" and a.native.upsample_stride == 16


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
