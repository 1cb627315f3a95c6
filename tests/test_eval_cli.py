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


# -- protocol version 2, official numbers, real IRN files, split selection, bad inputs ----------------


def _irn_dir(tmp_path, masks, seed=3, scale=1.0):
    rng = np.random.default_rng(seed)
    d = tmp_path / "irn"
    d.mkdir(exist_ok=True)
    maps = {}
    for k, m in masks.items():
        c = int(m[4, 4])
        hr = (rng.random((1, *m.shape)) * scale).astype(np.float32)
        import torch

        np.save(d / f"{k}.npy", {"keys": torch.tensor([c - 1]), "cam": torch.from_numpy(hr[:, ::4, ::4].copy()),
                                 "high_res": hr})
        maps[k] = (hr, c)
    return d, maps


def _read_record(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_eval_reads_make_cam_npy_with_tensors_and_gives_the_official_number(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    cams, maps = _irn_dir(tmp_path, masks)
    rc = main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(tmp_path / "o"), "--workers", "0",
               "--native", "0.15", "--official", "irn"])
    assert rc == 0, capsys.readouterr().err
    rec = _read_record(tmp_path / "o", "eval-irn")
    ref = SweepEvaluator(21, native_rule=0.15)
    for k, (hr, c) in maps.items():
        ref.update(hr, [c], masks[k], image_id=k)
    assert rec["sweep"]["miou"] == ref.results()["sweep"]["miou"]
    assert rec["native"] == {**ref.results()["native"]}
    assert rec["official"]["script"] == "irn" and rec["official"]["miou"] == pytest.approx(rec["native"]["miou"])
    assert "official irn" in capsys.readouterr().out


def test_workers_give_the_same_record_as_one_process(tmp_path, gt_dir):
    d, masks = gt_dir
    cams, _ = _irn_dir(tmp_path, masks)
    recs = []
    for w in ("0", "2"):
        out = tmp_path / f"o{w}"
        assert main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(out), "--workers", w,
                     "--native", "power:32"]) == 0
        r = _read_record(out, "eval-irn")
        r.pop("created_at")
        recs.append(r)
        counts = np.load(out / r["per_image_counts"])
        recs.append({k: counts[k].tolist() for k in ("ids", "tp", "fp", "fn")})
    assert recs[0] == recs[2] and recs[1] == recs[3]


def test_ids_file_scores_only_the_split_and_names_it(tmp_path, gt_dir):
    d, masks = gt_dir
    pred_dir = tmp_path / "pred"
    for k, m in list(masks.items())[:3]:  # predictions for the split only
        write_index_png(pred_dir / f"{k}.png", np.where(m == 255, 0, m))
    ids = tmp_path / "val.txt"
    ids.write_text("".join(f"{k}\n" for k in list(masks)[:3]))
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--ids", str(ids), "--out", str(tmp_path / "o"),
                 "--workers", "0"]) == 0
    rec = _read_record(tmp_path / "o", "eval-pred")
    assert rec["split"] == "val" and rec["num_images"] == 3 and rec["metrics"]["miou"] == 1.0


def test_dataset_split_with_gt_folder_groups_with_run_records(tmp_path, voc_tree):
    from wsss_bench.data import build_dataset
    from wsss_bench.data.base import fingerprint_of

    pred_dir = tmp_path / "pred"
    for k in voc_tree.splits["val"]:
        write_index_png(pred_dir / f"{k}.png", np.zeros_like(voc_tree.masks[k]))
    gt = voc_tree.root / "SegmentationClass"  # holds train and val masks
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt), "--dataset", "voc", "--data-root",
                 str(voc_tree.root), "--split", "val", "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    rec = _read_record(tmp_path / "o", "eval-pred")
    ds = build_dataset("voc", voc_tree.root, "val")
    assert (rec["dataset"], rec["split"], rec["num_images"]) == ("voc", "val", 2)
    assert rec["fingerprint"] == fingerprint_of({i: ds.mask_path(i) for i in ds.ids})


def test_prediction_with_no_label_pixels_needs_the_option(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    pred_dir = tmp_path / "pred"
    for k, m in masks.items():
        p = np.where(m == 255, 0, m)
        p[5:7, :] = 255  # ignore band of a pseudo label
        write_index_png(pred_dir / f"{k}.png", p)
    out = tmp_path / "o"
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "predicted value 255" in err and err.count("\n") == 1 and not out.exists()
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--out", str(out), "--workers", "0",
                 "--unlabelled", "exclude"]) == 0
    rec = _read_record(out, "eval-pred")
    assert rec["metrics"]["coverage"] == pytest.approx(1 - 2 * 16 / (11 * 16)) and rec["unlabelled"] == "exclude"
    assert rec["metrics"]["miou"] == 1.0


def test_maps_outside_unit_range_are_refused_or_normalised(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    cams, _ = _irn_dir(tmp_path, masks, scale=3.0)
    out = tmp_path / "o"
    assert main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert ".npy: maps have values outside [0, 1]" in err and "--normalize" in err and not out.exists()
    assert main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(out), "--workers", "0",
                 "--normalize", "max"]) == 0
    assert _read_record(out, "eval-irn")["normalize"] == "max"


def test_class_png_maps_are_scored(tmp_path, gt_dir):
    from wsss_bench.io import save_cam_pngs

    d, masks = gt_dir
    rng = np.random.default_rng(5)
    png_dir = tmp_path / "png"
    ref = SweepEvaluator(21)
    for k, m in masks.items():
        c = int(m[4, 4])
        s = rng.random((1, *m.shape)).astype(np.float32)
        save_cam_pngs(png_dir, k, np.array([c]), s, bits=16)
        ref.update(np.rint(s * 65535).astype(np.float32) / np.float32(65535), [c], m, image_id=k)
    assert main(["eval", "--cams", str(png_dir), "--gt", str(d), "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    assert _read_record(tmp_path / "o", "eval-png")["sweep"] == ref.results()["sweep"]


@pytest.mark.parametrize("args, message", [
    (["--thresholds", "0"], "--num-thresholds must be in 1..10000"),
    (["--thresholds", "1000000000"], "--num-thresholds must be in 1..10000"),
    (["--num-thresholds", "0"], "--num-thresholds"),
    (["--num-thresholds", "1000000000"], "10000"),
    (["--thresholds", "20", "--num-thresholds", "20"], "give --num-thresholds once"),
    (["--labels", "nosuch"], "'gt', 'maps'"),
    (["--official", "nosuch"], "'irn', 'edam', 'toco'"),
    (["--normalize", "nosuch"], "'max', 'minmax'"),
    (["--native", "1.5"], "native threshold must be a number in [0, 1]"),
    (["--native", "power:0"], "exponent"),
    (["--native", "power:x"], "must be a number"),
    (["--native", "0.1", "--native-threshold", "0.2"], "not both"),
    (["--workers", "-1"], "--workers"),
    (["--pred", "PRED"], "exactly one of --pred"),
    (["--ids", "NOFILE"], "id list file not found"),
])
def test_bad_options_fail_before_any_work(tmp_path, gt_dir, capsys, args, message):
    d, masks = gt_dir
    cams, _ = _irn_dir(tmp_path, masks)
    args = [a.replace("PRED", str(cams)).replace("NOFILE", str(tmp_path / "none.txt")) for a in args]
    out = tmp_path / "o"
    rc = main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(out), "--workers", "0", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_option_for_the_other_kind_of_input_is_refused(tmp_path, gt_dir, capsys):
    d, _ = gt_dir
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--official", "irn"]) == 2
    assert "--official applies to --cams" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(d), "--out", str(tmp_path / "afile")]) == 2
    assert "--out names a file" in capsys.readouterr().err


def test_a_bad_file_in_a_worker_is_one_line_naming_it(tmp_path, gt_dir, capsys):
    d, masks = gt_dir
    cams, _ = _irn_dir(tmp_path, masks)
    victim = sorted(cams.glob("*.npy"))[3]
    victim.write_bytes(victim.read_bytes()[:100])
    out = tmp_path / "o"
    assert main(["eval", "--cams", str(cams), "--gt", str(d), "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and err.count("\n") == 1 and not out.exists()
