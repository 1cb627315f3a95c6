"""`wsss-bench eval` end to end on small folders, and its errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from wsss_bench.cli import main
from wsss_bench.data.classes import voc_palette
from wsss_bench.io import load_cam_file, save_cam_file, write_index_png
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.sweep import SweepEvaluator


@pytest.fixture
def gt_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "gt"
    masks = {}
    for i in range(6):
        m = np.zeros((12, 16), np.uint8)
        c = int(rng.integers(1, 21))
        m[2:8, 3:10] = c
        m[1, :] = 255
        masks[f"img{i}"] = m
        write_index_png(d / f"img{i}.png", m, voc_palette())
    return d, masks


def test_eval_pred_folder_matches_evaluator(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    pred_dir = tmp_path / "pred"
    ref = ConfusionEvaluator(21)
    for k, m in masks.items():
        p = m.copy()
        p[p == 255] = 0
        p[5:9, 5:12] = 3
        write_index_png(pred_dir / f"{k}.png", p)  # greyscale
        ref.update(p, m, k)
    rc = main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--classes", "voc",
               "--out", str(tmp_path / "out"), "--workers", "0"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "eval-pred.json").read_text())
    assert rec["kind"] == "segmentation" and rec["num_images"] == 6
    assert rec["metrics"]["miou"] == pytest.approx(ref.metrics()["miou"])
    assert (tmp_path / "out" / rec["per_image_counts"]).is_file()
    assert "mIoU" in capsys.readouterr().out


def test_eval_irn_npy_and_npz_give_the_same_sweep(tmp_path, gt_dir):
    d, masks = gt_dir
    rng = np.random.default_rng(1)
    npy_dir, npz_dir = tmp_path / "npy", tmp_path / "npz"
    npy_dir.mkdir()
    ref = SweepEvaluator(21)
    for k, m in masks.items():
        c = int(m[4, 4])
        cam = rng.random((1, *m.shape)).astype(np.float16).astype(np.float32)
        np.save(npy_dir / f"{k}.npy", {"keys": np.array([c - 1]), "high_res": cam, "cam": cam[:, ::4, ::4]})
        save_cam_file(npz_dir / f"{k}.npz", np.array([c]), cam)
        ref.update(cam, [c], m, image_id=k)
    outs = []
    for src in (npy_dir, npz_dir):
        rc = main(["eval", "--cams", str(src), "--gt", str(d), "--out", str(tmp_path / "o"), "--workers", "0",
                   "--native-threshold", "0.15"])
        assert rc == 0
        outs.append(json.loads((tmp_path / "o" / f"eval-{src.name}.json").read_text()))
    assert outs[0]["sweep"] == outs[1]["sweep"]
    assert outs[0]["sweep"]["miou"] == pytest.approx(ref.results()["sweep"]["miou"])
    assert len(outs[0]["sweep"]["thresholds"]) == 100
    assert outs[0]["native"]["threshold"] == 0.15


def test_missing_prediction_is_an_error_and_writes_nothing(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    pred_dir = tmp_path / "pred"
    for k in list(masks)[:-1]:
        write_index_png(pred_dir / f"{k}.png", masks[k] * 0)
    rc = main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "img5" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_wrong_size_prediction_names_the_file(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    pred_dir = tmp_path / "pred"
    for k, m in masks.items():
        write_index_png(pred_dir / f"{k}.png", np.zeros((m.shape[0] + 1, m.shape[1]), np.uint8))
    rc = main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "img0.png" in err and "differs" in err


def test_pickled_npy_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"keys": np.array([0]), "high_res": Evil()}
    with open(p, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)
    from wsss_bench.errors import WsssBenchError

    with pytest.raises(WsssBenchError, match="evil.npy"):
        load_cam_file(p)
    assert not marker.exists()
    assert pickle  # the module is used to build the payload above


def test_truncated_npz_is_our_error(tmp_path):
    p = tmp_path / "a.npz"
    save_cam_file(p, np.array([1]), np.ones((1, 4, 4)))
    p.write_bytes(p.read_bytes()[:30])
    from wsss_bench.errors import WsssBenchError

    with pytest.raises(WsssBenchError, match="a.npz"):
        load_cam_file(p)
