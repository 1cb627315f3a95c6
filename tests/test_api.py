"""The Python API (wsss_bench.api), against independent references: torchmetrics'
MulticlassJaccardIndex, naive numpy loops written here from the protocol's definitions, and a
two-process gloo group for the distributed sum. The docstrings' examples run as doctests."""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsss_bench
from wsss_bench import api
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------


def naive_confusion(pred: np.ndarray, gt: np.ndarray, C: int, ignore: int = 255) -> np.ndarray:
    conf = np.zeros((C, C), np.int64)
    for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist(), strict=True):
        if g != ignore:
            conf[g, p] += 1
    return conf


def naive_metrics(conf: np.ndarray) -> dict:
    C = conf.shape[0]
    iou, valid = [], []
    for c in range(C):
        tp = conf[c, c]
        fp = conf[:, c].sum() - tp
        fn = conf[c, :].sum() - tp
        union = tp + fp + fn
        iou.append(None if union == 0 else tp / union)
        valid.append(union > 0)
    total = conf.sum()
    vals = [v for v in iou if v is not None]
    fw = sum(conf[c, :].sum() / total * iou[c] for c in range(C) if iou[c] is not None)
    return {"iou": iou, "miou": sum(vals) / len(vals) if vals else None,
            "pixel_accuracy": np.trace(conf) / total, "fw_iou": fw}


def is_calibration(image_id: str) -> bool:
    return int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % 10 == 0


def naive_pseudo_label(maps: np.ndarray, classes: list[int], t: float) -> np.ndarray:
    """Pixel by pixel: the first class of highest score where that score (clamped) > float32(t)."""
    K, H, W = maps.shape
    out = np.zeros((H, W), np.int64)
    for y in range(H):
        for x in range(W):
            if K == 0:
                continue
            scores = [min(max(float(np.float32(maps[k, y, x])), 0.0), 1.0) for k in range(K)]
            best = max(range(K), key=lambda k: (scores[k], -classes[k]))
            if np.float32(scores[best]) > np.float32(t):
                out[y, x] = classes[best]
    return out


def assert_metrics_equal(got: dict, ref: dict) -> None:
    for g, r in zip(got["iou"], ref["iou"], strict=True):
        assert (g is None) == (r is None)
        if r is not None:
            assert g == pytest.approx(r, abs=1e-12)
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"], abs=1e-12)
    assert got["fw_iou"] == pytest.approx(ref["fw_iou"], abs=1e-12)


def random_batch(rng: np.random.Generator, B: int, C: int, H: int, W: int):
    target = rng.integers(0, C, (B, H, W)).astype(np.int64)
    target[rng.random((B, H, W)) < 0.1] = 255
    logits = rng.normal(size=(B, C, H, W)).astype(np.float32)
    return torch.from_numpy(logits), torch.from_numpy(target)


# ----------------------------------------------------------------------------------------------
# the package
# ----------------------------------------------------------------------------------------------


def test_import_wsss_bench_loads_neither_torch_nor_pandas_and_exports_the_api_lazily():
    code = ("import sys, wsss_bench; heavy = [m for m in ('torch', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy; f = wsss_bench.evaluate_predictions; e = wsss_bench.SegEvaluator; "
            "heavy = [m for m in ('torch', 'pandas') if m in sys.modules]; assert not heavy, heavy; "
            "print(sorted(n for n in dir(wsss_bench) if not n.startswith('_')))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = eval(res.stdout)  # noqa: S307 - our own output
    for name in api.__all__:
        assert name in listed
        assert getattr(wsss_bench, name) is getattr(api, name)
    with pytest.raises(AttributeError):
        wsss_bench.no_such_name  # noqa: B018


def test_docstring_examples_of_the_api_run_as_doctests():
    res = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 30
    assert res.failed == 0


# ----------------------------------------------------------------------------------------------
# SegEvaluator
# ----------------------------------------------------------------------------------------------


def test_seg_evaluator_equals_torchmetrics_jaccard_and_a_naive_loop_over_several_batches():
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(0)
    C = 6
    ev = api.SegEvaluator(C, class_names=[f"c{i}" for i in range(C)])
    tm = MulticlassJaccardIndex(num_classes=C, average=None, ignore_index=255)
    conf = np.zeros((C, C), np.int64)
    for B, H, W in ((2, 7, 9), (3, 5, 4), (1, 11, 3)):
        logits, target = random_batch(rng, B, C, H, W)
        ev.update(logits, target)
        tm.update(logits.argmax(1), target)
        conf += naive_confusion(logits.argmax(1).numpy(), target.numpy(), C)
    out = ev.compute()
    assert_metrics_equal(out, naive_metrics(conf))
    assert out["iou"] == pytest.approx(tm.compute().double().tolist(), abs=1e-6)
    assert out["classes"] == [f"c{i}" for i in range(C)]
    np.testing.assert_array_equal(ev.confusion_matrix(), conf)
    assert out["num_pixels"] == int(conf.sum())


def test_seg_evaluator_hard_predictions_and_logits_give_the_same_counts_and_numpy_works_too():
    rng = np.random.default_rng(1)
    logits, target = random_batch(rng, 2, 4, 6, 5)
    a, b, c = api.SegEvaluator(4), api.SegEvaluator(4), api.SegEvaluator(4)
    a.update(logits, target)
    b.update(logits.argmax(1).to(torch.uint8), target)
    c.update(logits.numpy(), target.numpy())
    np.testing.assert_array_equal(a.confusion_matrix(), b.confusion_matrix())
    np.testing.assert_array_equal(a.confusion_matrix(), c.confusion_matrix())


def test_seg_evaluator_compute_leaves_the_state_and_reset_clears_it():
    rng = np.random.default_rng(2)
    ev = api.SegEvaluator(3)
    first = random_batch(rng, 2, 3, 4, 4)
    second = random_batch(rng, 1, 3, 4, 4)
    ev.update(*first)
    assert ev.compute() == ev.compute()
    ev.update(*second)
    both = ev.compute()
    ref = api.SegEvaluator(3)
    ref.update(*first)
    ref.update(*second)
    assert both == ref.compute()
    ev.reset()
    assert ev.compute()["miou"] is None and ev.compute()["num_pixels"] == 0
    ev.update(*second)
    only = api.SegEvaluator(3)
    only.update(*second)
    assert ev.compute() == only.compute()


def test_seg_evaluator_refuses_bad_shapes_and_values_with_one_line():
    ev = api.SegEvaluator(3)
    with pytest.raises(WsssBenchError, match="do not match 3 classes"):
        ev.update(torch.zeros(2, 4, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(WsssBenchError, match="differs from target shape"):
        ev.update(torch.zeros(2, 5, 6, dtype=torch.long), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(WsssBenchError, match="ground-truth value 7"):
        ev.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(WsssBenchError, match="integer class indices"):
        ev.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(WsssBenchError, match="ignore index"):
        api.SegEvaluator(3, ignore_index=1)
    with pytest.raises(WsssBenchError, match="class names"):
        api.SegEvaluator(3, class_names=["a", "b"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seg_evaluator_counts_on_the_gpu_where_the_batch_is():
    rng = np.random.default_rng(3)
    cpu, gpu = api.SegEvaluator(5), api.SegEvaluator(5)
    for _ in range(3):
        logits, target = random_batch(rng, 2, 5, 33, 17)
        cpu.update(logits, target)
        gpu.update(logits.cuda(), target.cuda())
    assert gpu._ev.backend == "torch" and gpu._ev.device.type == "cuda"
    assert gpu.compute() == cpu.compute()


# ----------------------------------------------------------------------------------------------
# PseudoLabelEvaluator
# ----------------------------------------------------------------------------------------------


def sweep_case(seed: int, n: int = 12, C: int = 5, H: int = 6, W: int = 7):
    rng = np.random.default_rng(seed)
    ids = [f"img{i:03d}" for i in range(n)]
    maps = rng.random((n, C - 1, H, W)).astype(np.float32)
    maps[rng.random(maps.shape) < 0.05] = 1.2  # clamped to 1
    targets = rng.integers(0, C, (n, H, W)).astype(np.int64)
    targets[rng.random(targets.shape) < 0.1] = 255
    labels = (rng.random((n, C - 1)) < 0.5).astype(np.int64)
    labels[0] = 0  # an image without classes: background everywhere
    return ids, maps, labels, targets


def naive_sweep(ids, maps, labels, targets, C: int, T: int, native: float | None = None):
    """mIoU at every threshold from per-threshold pseudo labels, and the calibrated choice."""
    def curve(select):
        out = []
        for j in range(T):
            conf = np.zeros((C, C), np.int64)
            for i in select:
                cls = [c + 1 for c in range(C - 1) if labels[i][c]]
                pl = naive_pseudo_label(maps[i][[c - 1 for c in cls]], cls, j / T)
                conf += naive_confusion(pl, targets[i], C)
            out.append(conf)
        return out

    everyone = range(len(ids))
    confs = curve(everyone)
    mious = [naive_metrics(c)["miou"] for c in confs]
    best = int(np.argmax(mious))
    cal = [i for i in everyone if is_calibration(ids[i])]
    rest = [i for i in everyone if not is_calibration(ids[i])]
    ref = {"miou": mious, "best": best}
    if cal and rest:
        cal_mious = [naive_metrics(c)["miou"] for c in curve(cal)]
        jc = int(np.argmax(cal_mious))
        ref["calibrated"] = (jc / T, naive_metrics(curve(rest)[jc])["miou"])
    if native is not None:
        conf = np.zeros((C, C), np.int64)
        for i in everyone:
            cls = [c + 1 for c in range(C - 1) if labels[i][c]]
            conf += naive_confusion(naive_pseudo_label(maps[i][[c - 1 for c in cls]], cls, native), targets[i], C)
        ref["native"] = naive_metrics(conf)["miou"]
    return ref


def test_pseudo_label_evaluator_equals_a_per_threshold_naive_loop_with_calibration_and_native_rule():
    C, T = 5, 20
    ids, maps, labels, targets = sweep_case(0, n=40)
    assert any(map(is_calibration, ids)) and not all(map(is_calibration, ids))
    ev = api.PseudoLabelEvaluator(C, num_thresholds=T, native=0.35)
    for s in range(0, 40, 8):  # batches of 8
        ev.update(torch.from_numpy(maps[s:s + 8]), torch.from_numpy(labels[s:s + 8]),
                  torch.from_numpy(targets[s:s + 8]), image_ids=ids[s:s + 8])
    out = ev.compute()
    ref = naive_sweep(ids, maps, labels, targets, C, T, native=0.35)
    assert out["sweep"]["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert out["best_threshold"] == ref["best"] / T
    assert out["best_miou"] == pytest.approx(ref["miou"][ref["best"]], abs=1e-12)
    assert (out["calibrated"]["threshold"], out["calibrated"]["miou"]) == pytest.approx(ref["calibrated"], abs=1e-12)
    assert out["native"]["miou"] == pytest.approx(ref["native"], abs=1e-12)
    assert out["num_images"] == 40


def test_pseudo_label_evaluator_labels_none_means_the_classes_of_the_target_and_numpy_works():
    C, T = 4, 10
    ids, maps, _, targets = sweep_case(1, n=6, C=C)
    gt_labels = np.array([[int(np.any(t == c)) for c in range(1, C)] for t in targets])
    a = api.PseudoLabelEvaluator(C, num_thresholds=T)
    b = api.PseudoLabelEvaluator(C, num_thresholds=T)
    a.update(torch.from_numpy(maps), None, torch.from_numpy(targets), image_ids=ids)
    for i in range(6):  # one image at a time, numpy
        b.update(maps[i], gt_labels[i], targets[i], image_ids=ids[i])
    ref = naive_sweep(ids, maps, gt_labels, targets, C, T)
    assert a.compute()["sweep"] == b.compute()["sweep"]
    assert a.compute()["sweep"]["miou"] == pytest.approx(ref["miou"], abs=1e-12)


def test_pseudo_label_evaluator_normalises_torch_maps_as_the_file_reader_does():
    from wsss_bench.io import normalize_maps

    rng = np.random.default_rng(4)
    raw = rng.normal(size=(3, 5, 6)).astype(np.float32) * 4
    raw[2] = -1.0  # all negative: max gives zeros
    raw[1, 0, 0] = raw[1].max() + 1
    for mode in ("max", "minmax"):
        np.testing.assert_allclose(api._normalize(torch.from_numpy(raw), mode).numpy(), normalize_maps(raw, mode),
                                   rtol=1e-6, atol=1e-7)
    C, T = 4, 10
    maps = rng.normal(size=(2, C - 1, 5, 6)).astype(np.float32) * 3
    targets = rng.integers(0, C, (2, 5, 6))
    labels = np.ones((2, C - 1), np.int64)
    a = api.PseudoLabelEvaluator(C, num_thresholds=T, normalize="max")
    a.update(torch.from_numpy(maps), torch.from_numpy(labels), torch.from_numpy(targets))
    scaled = np.stack([normalize_maps(m, "max") for m in maps])
    ref = naive_sweep(["0", "1"], scaled, labels, targets, C, T)
    assert a.compute()["sweep"]["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    with pytest.raises(WsssBenchError, match="normalize must be one of"):
        api.PseudoLabelEvaluator(C, normalize="softmax")


def test_pseudo_label_evaluator_refuses_maps_that_do_not_match():
    ev = api.PseudoLabelEvaluator(4)
    with pytest.raises(WsssBenchError, match="3 foreground classes"):
        ev.update(torch.zeros(2, 4, 5, 5), None, torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(WsssBenchError, match="labels of shape"):
        ev.update(torch.zeros(2, 3, 5, 5), torch.ones(2, 4), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(WsssBenchError, match="image ids"):
        ev.update(torch.zeros(2, 3, 5, 5), None, torch.zeros(2, 5, 5, dtype=torch.long), image_ids=["a"])
    with pytest.raises(WsssBenchError, match="NaN"):
        ev.update(torch.full((1, 3, 2, 2), float("nan")), torch.ones(1, 3), torch.zeros(1, 2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------


def write_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)


@pytest.fixture
def folder_case(tmp_path):
    rng = np.random.default_rng(5)
    C = 4
    ids = [f"im{i}" for i in range(7)]
    gts, preds = {}, {}
    for i in ids:
        h, w = int(rng.integers(5, 12)), int(rng.integers(5, 12))
        g = rng.integers(0, C, (h, w))
        g[rng.random((h, w)) < 0.1] = 255
        gts[i], preds[i] = g, rng.integers(0, C, (h, w))
        write_png(tmp_path / "gt" / f"{i}.png", g)
        write_png(tmp_path / "pred" / f"{i}.png", preds[i])
    return tmp_path, C, ids, gts, preds


def test_evaluate_predictions_equals_a_naive_loop_and_its_frames_and_saved_record_agree(folder_case, tmp_path):
    root, C, ids, gts, preds = folder_case
    res = api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), workers=0, out=root / "records")
    conf = sum(naive_confusion(preds[i], gts[i], C) for i in ids)
    ref = naive_metrics(conf)
    assert_metrics_equal(res.metrics, ref)
    assert res.record["kind"] == "segmentation" and res.record["num_images"] == len(ids)
    frame = res.per_class()
    assert list(frame.index) == ["background", "class1", "class2", "class3"]
    assert frame["iou"].tolist() == pytest.approx([np.nan if v is None else v for v in ref["iou"]], nan_ok=True)
    assert sorted(res.counts["ids"].tolist()) == ids
    assert res.path is not None and res.path.is_file()
    # a subset of the ids, as a list and as a split file: scored on those only, split named
    sub = ids[:3]
    (root / "val.txt").write_text("\n".join(sub) + "\n")
    by_list = api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), ids=sub, split="val", workers=0)
    by_file = api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), ids=root / "val.txt", workers=0)
    assert by_list.record["split"] == by_file.record["split"] == "val"
    assert by_list.metrics == by_file.metrics
    assert_metrics_equal(by_list.metrics, naive_metrics(sum(naive_confusion(preds[i], gts[i], C) for i in sub)))
    # the record on disk reads back with the same numbers
    df = api.load_records(root / "records", per_class=True)
    assert len(df) == 1
    assert df.loc[0, "miou_best"] == pytest.approx(ref["miou"], abs=1e-12)
    assert df.loc[0, "kind"] == "segmentation" and df.loc[0, "split"] == "gt"
    assert df.loc[0, "iou/class1"] == pytest.approx(ref["iou"][1], abs=1e-12)


def test_evaluate_predictions_names_a_missing_prediction(folder_case):
    root, C, ids, _, _ = folder_case
    (root / "pred" / f"{ids[2]}.png").unlink()
    with pytest.raises(WsssBenchError, match=f"missing prediction for image '{ids[2]}'"):
        api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), workers=0)
    with pytest.raises(WsssBenchError, match="give the ground truth"):
        api.evaluate_predictions(root / "pred")
    with pytest.raises(WsssBenchError, match="data_root"):
        api.evaluate_predictions(root / "pred", dataset="voc")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("api") / "shapes", num_images=8, seed=3, size=(32, 36))


def test_evaluate_maps_of_a_dataset_split_equals_the_streaming_evaluator_and_a_naive_loop(shapes, tmp_path):
    from wsss_bench.data import build_dataset

    ds = build_dataset("synthetic", shapes, "train")
    C = ds.classes.num_classes
    rng = np.random.default_rng(6)
    ev = api.PseudoLabelEvaluator(C, num_thresholds=10, native=0.5)
    ids, all_maps, all_labels, targets = [], [], [], []
    for i in ds.ids:
        g = np.asarray(Image.open(ds.mask_path(i)))
        maps = rng.random((C - 1, *g.shape)).astype(np.float32)
        present = [c for c in range(1, C) if np.any(g == c)]
        np.savez(tmp_path / f"{i}.npz", classes=np.array(present), scores=maps[[c - 1 for c in present]])
        lab = np.array([int(c in present) for c in range(1, C)])
        ev.update(maps, lab, g, image_ids=i)
        ids.append(i)
        all_maps.append(maps)
        all_labels.append(lab)
        targets.append(g.astype(np.int64))
    res = api.evaluate_maps(tmp_path, dataset="synthetic", data_root=shapes, split="train", native=0.5,
                            num_thresholds=10, workers=0)
    out = ev.compute()
    for key in ("sweep", "best_threshold", "metrics", "calibrated"):
        assert res.record[key] == out[key], key
    assert res.record["native"]["miou"] == out["native"]["miou"]
    assert res.record["dataset"] == "synthetic" and res.record["split"] == "train"
    ref = naive_sweep(ids, all_maps, all_labels, targets, C, 10, native=0.5)
    assert res.sweep()["miou"].tolist() == pytest.approx(ref["miou"], abs=1e-12)
    assert res.record["native"]["miou"] == pytest.approx(ref["native"], abs=1e-12)
    row = res.to_frame().iloc[0]
    assert row["miou_best"] == res.miou and row["miou_native"] == res.record["native"]["miou"]


def test_load_records_ignores_non_records_and_warns_about_malformed_ones(folder_case):
    root, C, ids, _, _ = folder_case
    api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), workers=0, name="a", out=root / "rec")
    api.evaluate_predictions(root / "pred", root / "gt", classes=str(C), workers=0, name="b", ids=ids[:2],
                             out=root / "rec")
    (root / "rec" / "leaderboard.json").write_text(json.dumps({"groups": []}))
    (root / "rec" / "broken.json").write_text(json.dumps({"protocol_version": 2, "kind": "segmentation"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = api.load_records([root / "rec"])
    assert sorted(df["name"]) == ["a", "b"]
    assert any("broken.json" in str(w.message) for w in caught)
    assert not any("leaderboard.json" in str(w.message) for w in caught)
    with pytest.raises(WsssBenchError, match="no such file or folder"):
        api.load_records(root / "nothing")


# ----------------------------------------------------------------------------------------------
# torch.distributed: two gloo processes sum to the single-process result
# ----------------------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from wsss_bench import PseudoLabelEvaluator, SegEvaluator

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data = np.load(sys.argv[5])
    seg = SegEvaluator(5)
    pl = PseudoLabelEvaluator(5, num_thresholds=10, native=0.4)
    ids = [str(i) for i in data["ids"]]
    for i in range(rank, len(ids), world):  # a strided shard, as the runner's
        seg.update(torch.from_numpy(data["logits"][i:i + 1]), torch.from_numpy(data["target"][i:i + 1]))
        pl.update(torch.from_numpy(data["maps"][i:i + 1]), torch.from_numpy(data["labels"][i:i + 1]),
                  torch.from_numpy(data["target"][i:i + 1]), image_ids=ids[i:i + 1])
    own = seg._ev.state().copy()
    first, again = seg.compute(), seg.compute()
    assert first == again
    assert (seg._ev.state() == own).all()  # the rank's own counts are unchanged
    res = {"seg": first, "conf": seg.confusion_matrix().tolist(), "pl": pl.compute(), "pl_again": pl.compute()}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_sum_their_counts_to_the_single_process_result(tmp_path):
    rng = np.random.default_rng(7)
    n, C, H, W = 9, 5, 6, 8  # an odd count: the shards differ in size
    logits, target = random_batch(rng, n, C, H, W)
    maps = rng.random((n, C - 1, H, W)).astype(np.float32)
    labels = (rng.random((n, C - 1)) < 0.6).astype(np.int64)
    ids = np.array([f"x{i}" for i in range(n)])
    np.savez(tmp_path / "data.npz", logits=logits.numpy(), target=target.numpy(), maps=maps, labels=labels, ids=ids)
    (tmp_path / "worker.py").write_text(WORKER)
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), "2", port, str(tmp_path),
                               str(tmp_path / "data.npz")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seg = api.SegEvaluator(C)
    seg.update(logits, target)
    pl = api.PseudoLabelEvaluator(C, num_thresholds=10, native=0.4)
    pl.update(torch.from_numpy(maps), torch.from_numpy(labels), target, image_ids=[str(i) for i in ids])
    single, single_pl = seg.compute(), pl.compute()
    for r in ranks:
        assert r["seg"] == json.loads(json.dumps(single))  # exact: int64 sums
        assert r["conf"] == seg.confusion_matrix().tolist()
        assert r["pl"] == r["pl_again"] == json.loads(json.dumps(single_pl))


# ----------------------------------------------------------------------------------------------
# the Python API examples (docs/api.md, linked from the README), run as written
# ----------------------------------------------------------------------------------------------


def readme_api_blocks() -> list[str]:
    import re

    section = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert len(blocks) == 2
    return blocks


def test_readme_folder_example_runs_on_a_voc_layout_with_irn_maps(voc_tree, tmp_path, monkeypatch, capsys):
    import pandas as pd

    from wsss_bench.data import build_dataset

    # what the example reads: VOCdevkit/VOC2012 (the fixture), pred/<id>.png for val, IRN maps for train
    rng = np.random.default_rng(8)
    val = build_dataset("voc", voc_tree.root, "val")
    for i in val.ids:
        g = voc_tree.masks[i]
        write_png(tmp_path / "pred" / f"{i}.png", np.where(rng.random(g.shape) < 0.8, np.where(g == 255, 0, g), 0))
    train = build_dataset("voc", voc_tree.root, "train")
    cam_dir = tmp_path / "irn" / "result" / "cam"
    cam_dir.mkdir(parents=True)
    for i in train.ids:
        g = voc_tree.masks[i]
        keys = np.array(sorted({int(c) - 1 for c in np.unique(g) if 0 < c < 255}))
        np.save(cam_dir / f"{i}.npy", {"keys": keys, "high_res": rng.random((len(keys), *g.shape)).astype(np.float32)})
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_api_blocks()[0], "docs/api.md (folders)", "exec"), ns)  # noqa: S102
    res, cams, df = ns["res"], ns["cams"], ns["df"]
    ref = api.evaluate_predictions(tmp_path / "pred", api.ground_truth(tmp_path / "VOCdevkit" / "VOC2012" /
                                                                       "SegmentationClass", classes="voc",
                                                                       ids=val.ids), workers=0)
    assert res.metrics == ref.metrics and res.record["split"] == "val" and res.record["dataset"] == "voc"
    assert cams.record["kind"] == "pseudo_label" and cams.record["native"]["threshold"] == pytest.approx(0.15)
    assert isinstance(ns["curve"], pd.DataFrame) and len(ns["curve"]) == 100
    assert sorted(df["kind"]) == ["pseudo_label", "segmentation"]
    assert str(res.miou) in capsys.readouterr().out


def test_readme_streaming_example_runs_with_stand_in_loaders_and_models():
    rng = np.random.default_rng(9)
    C, H, W = 21, 12, 16

    def batch(B=2):
        masks = torch.from_numpy(rng.integers(0, C, (B, H, W)))
        masks[:, 0, :] = 255
        return torch.from_numpy(rng.random((B, 3, H, W)).astype(np.float32)), masks

    val_loader = [batch() for _ in range(3)]
    train_loader = []
    for k in range(3):
        images, masks = batch()
        labels = torch.zeros(2, C - 1, dtype=torch.long)
        for b in range(2):
            present = [int(c) for c in masks[b].unique() if 0 < int(c) < C]
            labels[b, [c - 1 for c in present]] = 1
        train_loader.append((images, masks, labels, [f"2007_{k}{b}" for b in range(2)]))
    w = torch.from_numpy(rng.normal(size=(C, 3)).astype(np.float32))

    def model(images):  # logits [B, 21, H, W]
        return torch.einsum("kc,bchw->bkhw", w, images)

    def cam_model(images):  # maps [B, 20, H, W], not normalised
        return torch.relu(model(images)[:, 1:])

    ns = {"val_loader": val_loader, "train_loader": train_loader, "model": model, "cam_model": cam_model}
    exec(compile(readme_api_blocks()[1], "docs/api.md (streaming)", "exec"), ns)  # noqa: S102
    conf = sum(naive_confusion(model(i).argmax(1).numpy(), m.numpy(), C) for i, m in val_loader)
    assert ns["out"]["miou"] == pytest.approx(naive_metrics(conf)["miou"], abs=1e-12)
    ref = api.PseudoLabelEvaluator(C, native=0.15)
    for images, masks, labels, ids in train_loader:
        maps = torch.stack([api._normalize(m, "max") for m in cam_model(images)])
        ref.update(maps, labels, masks, image_ids=ids)
    assert ns["res"] == ref.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pseudo_label_evaluator_on_the_gpu_equals_the_cpu():
    ids, maps, labels, targets = sweep_case(10, n=10)
    cpu, gpu = api.PseudoLabelEvaluator(5, native=0.3), api.PseudoLabelEvaluator(5, native=0.3, normalize="max")
    cpu_n = api.PseudoLabelEvaluator(5, native=0.3, normalize="max")
    gpu_plain = api.PseudoLabelEvaluator(5, native=0.3)
    for s in range(0, 10, 5):
        m, lab, t = (torch.from_numpy(a[s:s + 5]) for a in (maps, labels, targets))
        cpu.update(m, lab, t, image_ids=ids[s:s + 5])
        gpu_plain.update(m.cuda(), lab.cuda(), t.cuda(), image_ids=ids[s:s + 5])
        cpu_n.update(m, lab, t, image_ids=ids[s:s + 5])
        gpu.update(m.cuda(), lab.cuda(), t.cuda(), image_ids=ids[s:s + 5])
    assert gpu_plain._ev.backend == "torch"
    assert gpu_plain.compute() == cpu.compute()
    a, b = gpu.compute(), cpu_n.compute()  # normalised on the device: float32 division, compare closely
    assert a["sweep"]["miou"] == pytest.approx(b["sweep"]["miou"], abs=1e-3)
