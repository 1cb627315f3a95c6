"""Refined rows (saliency, CRF) are written as separate records beside the headline one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss_bench import refine as R
from wsss_bench.data import build_dataset
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import RunConfig, run_method
from wsss_bench.io import load_cam_file, write_index_png
from wsss_bench.metrics.confusion import ConfusionEvaluator


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("s") / "shapes", num_images=8, seed=11, size=(40, 48))


def saliency_from_gt(synth, out):
    ds = build_dataset("synthetic", synth, "train")
    for i in range(len(ds)):
        s = ds[i]
        sal = np.where((s.mask > 0) & (s.mask < 255), 255, 0).astype(np.uint8)
        write_index_png(out / f"{s.id}.png", sal)
    return ds


def test_saliency_row_is_a_separate_record_scored_from_the_cached_maps(synth, tmp_path):
    ds = saliency_from_gt(synth, tmp_path / "sal")
    cfg = RunConfig(method="center-prior", data_root=str(synth), out=str(tmp_path / "o"),
                    save_cams=str(tmp_path / "maps"), refine="saliency", saliency_dir=str(tmp_path / "sal"))
    res = run_method(cfg)
    head = res.record
    assert head.get("variant") is None and len(head["sweep"]["miou"]) == 100
    rec = json.loads((tmp_path / "o" / "center-prior-native-saliency.json").read_text())
    assert rec["variant"] == "saliency" and "sweep" not in rec and rec["refinement"]["saliency"]["theta"] == 0.2
    ref = ConfusionEvaluator(ds.classes.num_classes)
    for i in range(len(ds)):
        s = ds[i]
        classes, scores = load_cam_file(tmp_path / "maps" / f"{s.id}.npz")
        sal = R.load_saliency(tmp_path / "sal", s.id, s.mask.shape)
        ref.update(R.apply_saliency(scores, sal, classes=classes), s.mask, s.id)
    assert rec["metrics"]["miou"] == pytest.approx(ref.metrics()["miou"], abs=1e-12)
    # the saliency (from the ground truth) must help the centre prior
    assert rec["metrics"]["miou"] > head["metrics"]["miou"]


def test_refinement_needs_its_inputs(synth, tmp_path):
    with pytest.raises(WsssBenchError, match="--saliency"):
        run_method(RunConfig(method="center-prior", data_root=str(synth), out=str(tmp_path), refine="saliency"))
    with pytest.raises(WsssBenchError, match="--refine must be"):
        run_method(RunConfig(method="center-prior", data_root=str(synth), out=str(tmp_path), refine="blur"))
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.skipif(not R.crf_available(), reason="optional dense-CRF package (pip install 'wsss-bench[crf]') "
                    "not installed")
def test_crf_row_matches_dense_crf_on_the_cached_maps(synth, tmp_path):
    ds = build_dataset("synthetic", synth, "train")
    cfg = RunConfig(method="center-prior", data_root=str(synth), out=str(tmp_path / "o"),
                    save_cams=str(tmp_path / "maps"), refine="crf")
    run_method(cfg)
    rec = json.loads((tmp_path / "o" / "center-prior-native-crf.json").read_text())
    ref = ConfusionEvaluator(ds.classes.num_classes)
    for i in range(len(ds)):
        s = ds[i]
        classes, scores = load_cam_file(tmp_path / "maps" / f"{s.id}.npz")
        q = R.dense_crf(s.image, R.with_background(scores.astype(np.float32)))
        ids = np.concatenate([[0], classes])
        ref.update(torch.from_numpy(ids[np.argmax(q, axis=0)]), s.mask, s.id)
    assert rec["metrics"]["miou"] == pytest.approx(ref.metrics()["miou"], abs=1e-12)
    assert rec["refinement"]["crf"]["iterations"] == 3
