"""run_segmentation end to end on the synthetic set; test-split export; the segmenter registry."""

from __future__ import annotations

import json
import tarfile
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_bench.data import build_dataset
from wsss_bench.data.base import SegDataset
from wsss_bench.data.classes import VOC
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.records import read_counts, read_record, write_record
from wsss_bench.segmenters import registry
from wsss_bench.segmenters.base import TestTimeSettings
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter
from wsss_bench.segmenters.runner import run_segmentation
from wsss_bench.segmenters.tta import predict

TINY = {"width": 8, "blocks": [1, 1, 1, 1]}
FAST = TestTimeSettings(name="fast", scales=(0.75, 1.0), flip=True)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("data") / "synth", num_images=8, seed=0, size=(40, 52))
    return build_dataset("synthetic", root, "val")


def tiny_segmenter(num_classes: int) -> DeepLabV2Segmenter:
    torch.manual_seed(0)
    seg = DeepLabV2Segmenter(num_classes, hparams=TINY)
    seg.build()
    return seg


def test_end_to_end_record_and_palette_predictions(synth, tmp_path):
    seg = tiny_segmenter(synth.classes.num_classes)
    rec, counts = run_segmentation(seg, synth, FAST, save_pred=tmp_path / "pred", name="tiny")
    path = write_record(tmp_path / "records", rec, counts)
    back = read_record(path)
    assert back["kind"] == "segmentation" and back["segmenter"] == "deeplabv2"
    assert back["settings"]["name"] == "fast" and back["settings"]["scales"] == [0.75, 1.0]
    # the record names the network actually built: ResNet-101's layout at width 8, one block a stage
    blocks = "".join(str(b) for b in TINY["blocks"])
    assert back["hyperparameters"]["width"] == 8 and back["backbone"] == f"resnet-w8-b{blocks}"
    assert back["num_images"] == len(synth.ids) == 2
    # the pseudo-label runner's memory fields (inference.device.peak_memory): RSS, and CUDA or None
    assert set(back["timings"]) >= {"images_per_second", "seconds", "peak_rss_mb", "peak_device_memory_mb"}
    assert "peak_memory_mb" not in back["timings"]
    assert back["timings"]["peak_rss_mb"] > 0 and back["timings"]["peak_device_memory_mb"] is None
    assert back["data_root"] == str(Path(synth.root).resolve())
    # every prediction: a palette PNG of the image's size, equal to an independent predict call
    conf = np.zeros((6, 6), dtype=np.int64)
    for i, image_id in enumerate(synth.ids):
        sample = synth[i]
        with Image.open(tmp_path / "pred" / f"{image_id}.png") as im:
            assert im.mode == "P" and im.size == (sample.image.shape[1], sample.image.shape[0])
            png = np.asarray(im)
        x = seg.normalize(torch.from_numpy(sample.image[None]))
        with torch.no_grad():
            ref = predict(seg.logits, x, FAST)[0].numpy()
        np.testing.assert_array_equal(png, ref)
        valid = sample.mask != 255
        np.add.at(conf, (sample.mask[valid].astype(int), png[valid].astype(int)), 1)
    # metrics equal a confusion matrix computed here from the PNGs
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    miou = np.mean(tp[present] / union[present])
    assert back["metrics"]["miou"] == pytest.approx(miou)
    np.testing.assert_array_equal(read_counts(back)["tp"].sum(0), tp)


def test_batched_run_equals_single_image_run(synth):
    seg = tiny_segmenter(synth.classes.num_classes)
    one, c1 = run_segmentation(seg, synth, FAST, batch_size=1)
    two, c2 = run_segmentation(seg, synth, FAST, batch_size=2)
    assert one["metrics"]["miou"] == two["metrics"]["miou"]
    np.testing.assert_array_equal(c1["tp"], c2["tp"])


def test_class_count_mismatch_is_a_user_error(synth):
    with pytest.raises(WsssBenchError, match="predicts 21 classes"):
        run_segmentation(DeepLabV2Segmenter(21, hparams=TINY), synth, FAST)


class _NoTruthVOC(SegDataset):
    """A VOC-named split without ground truth, as VOC test is."""

    name = "voc"

    def __init__(self, root: Path, ids: list[str]):
        super().__init__(root, "test", VOC, ids)

    def image_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> None:
        return None


def test_split_without_ground_truth_writes_the_server_export(tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(30, 40), (36, 28)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"2008_00000{i}.jpg")
    ds = _NoTruthVOC(tmp_path, ["2008_000000", "2008_000001"])
    seg = tiny_segmenter(21)
    info, counts = run_segmentation(seg, ds, FAST, save_pred=tmp_path / "pred", export=tmp_path / "voc.tar.gz")
    assert counts is None and info["kind"] == "export" and info["num_images"] == 2
    with tarfile.open(info["export"]) as tar:
        names = tar.getnames()
        member = tar.extractfile("results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png")
        with Image.open(member) as im:
            assert im.size == (28, 36) and im.mode == "P"
    assert "results/VOC2012/Segmentation/comp6_test_cls/2008_000000.png" in names
    with pytest.raises(WsssBenchError, match="no ground truth"):
        run_segmentation(seg, ds, FAST)


def test_registry_lists_builtins_and_warns_naming_a_broken_plugin(monkeypatch):
    assert {"deeplabv2", "deeplabv3plus"} <= set(registry.installed_segmenters())
    broken = EntryPoint("broken-seg", "no_such_package.mod:Seg", registry.GROUP)
    real = registry.REGISTRY.entry_points()
    monkeypatch.setattr(registry.REGISTRY, "entry_points", lambda: {**real, "broken-seg": broken})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = registry.installed_segmenters()
    assert "broken-seg" not in found and "deeplabv2" in found
    assert any("broken-seg" in str(w.message) for w in caught)
    with pytest.raises(WsssBenchError, match="broken-seg.*failed to load"):
        registry.load_segmenter("broken-seg")
    with pytest.raises(WsssBenchError, match="unknown segmenter 'nope'"):
        registry.load_segmenter("nope")


def test_create_segmenter_builds_the_named_network():
    seg = registry.create_segmenter("deeplabv2", 6, hparams=TINY)
    assert isinstance(seg, DeepLabV2Segmenter) and seg.model is not None
    assert json.loads(json.dumps(seg.describe()))["native"]["fuse_at"] == "logits"



_DIST_SCRIPT = """
import pickle, sys
import torch
from wsss_bench.data import build_dataset
from wsss_bench.segmenters.base import TestTimeSettings
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter
from wsss_bench.segmenters.runner import run_segmentation

torch.manual_seed(0)
seg = DeepLabV2Segmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
seg.build()
ds = build_dataset("synthetic", sys.argv[1], "val")
rec, counts = run_segmentation(seg, ds, TestTimeSettings(name="fast", scales=(1.0,), flip=True))
if rec is not None:
    with open(sys.argv[2], "wb") as f:
        pickle.dump((rec["metrics"], {k: v.tolist() for k, v in counts.items()}), f)
"""


def test_two_process_gloo_run_equals_single_process_run(tmp_path):
    import pickle
    import subprocess
    import sys

    root = generate(tmp_path / "synth", num_images=12, seed=1, size=(32, 40))
    script = tmp_path / "dist_seg.py"
    script.write_text(_DIST_SCRIPT)
    single, dist = tmp_path / "single.pkl", tmp_path / "dist.pkl"
    subprocess.run([sys.executable, str(script), str(root), str(single)], check=True, timeout=240)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(script), str(root), str(dist)], check=True, timeout=240, capture_output=True)
    with open(single, "rb") as f:
        a = pickle.load(f)
    with open(dist, "rb") as f:
        b = pickle.load(f)
    assert a[0] == b[0]
    order = np.argsort(b[1]["ids"])
    assert sorted(a[1]["ids"]) == [b[1]["ids"][i] for i in order]
    np.testing.assert_array_equal(np.asarray(a[1]["tp"])[np.argsort(a[1]["ids"])], np.asarray(b[1]["tp"])[order])


def test_crf_row_is_labelled_and_records_its_parameters(synth):
    from wsss_bench.refine import crf_available
    from wsss_bench.segmenters.base import DEEPLAB_CRF

    if not crf_available():
        pytest.skip("pydensecrf2 not installed")
    seg = tiny_segmenter(synth.classes.num_classes)
    rec, _ = run_segmentation(seg, synth, FAST.replace(scales=(1.0,)).with_crf(), limit=1)
    assert rec["name"] == "deeplabv2-fast+crf" and rec["settings"]["name"] == "fast+crf"
    assert rec["settings"]["crf"] == DEEPLAB_CRF.to_dict() and rec["num_images"] == 1
    assert rec["variant"] == "crf"
