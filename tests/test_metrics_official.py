"""Each official evaluation script's number, reproduced exactly from the same maps.

The references below re-implement the official loops as read from the repositories
(jiwoon-ahn/irn step/eval_cam.py with chainercv's calc_semantic_segmentation_confusion;
allenwu97/EDAM eval.py do_python_eval with --type npy; zwyang6/MoRe utils/camutils.py cam_to_label
and utils/evaluate.py scores). They work on the raw maps and masks, independently of wsss-bench's
confusion counting, and the test asserts equality to the last bit.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from wsss_bench.data.classes import VOC
from wsss_bench.evaluate import GroundTruth, eval_cams
from wsss_bench.io import write_index_png
from wsss_bench.metrics.official import (
    ADAPTER_SCRIPTS,
    edam_miou,
    irn_miou,
    official_for_adapter,
    official_miou,
    toco_miou,
)
from wsss_bench.metrics.sweep import SweepEvaluator

# ---------------------------------------------------------------------------------------------
# references, from reading the official code
# ---------------------------------------------------------------------------------------------


def chainercv_confusion(pred_labels, gt_labels):
    n_class = 0
    confusion = np.zeros((n_class, n_class), dtype=np.int64)
    for pred_label, gt_label in zip(pred_labels, gt_labels, strict=True):
        pred_label = pred_label.flatten()
        gt_label = gt_label.flatten()
        lb_max = np.max((pred_label, gt_label))
        if lb_max >= n_class:
            expanded = np.zeros((lb_max + 1, lb_max + 1), dtype=np.int64)
            expanded[0:n_class, 0:n_class] = confusion
            n_class = lb_max + 1
            confusion = expanded
        mask = gt_label >= 0
        confusion += np.bincount(n_class * gt_label[mask].astype(int) + pred_label[mask],
                                 minlength=n_class ** 2).reshape((n_class, n_class))
    return confusion


def irn_eval_cam(cam_dicts, masks, cam_eval_thres):
    labels = []
    for m in masks:  # chainercv's VOC dataset reads 255 as -1
        lab = m.astype(np.int32)
        lab[lab == 255] = -1
        labels.append(lab)
    preds = []
    for cam_dict in cam_dicts:
        cams = cam_dict["high_res"]
        cams = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=cam_eval_thres)
        keys = np.pad(np.asarray(cam_dict["keys"]) + 1, (1, 0), mode="constant")
        cls_labels = np.argmax(cams, axis=0)
        cls_labels = keys[cls_labels]
        preds.append(cls_labels.copy())
    confusion = chainercv_confusion(preds, labels)
    gtj = confusion.sum(axis=1)
    resj = confusion.sum(axis=0)
    gtjresj = np.diag(confusion)
    denominator = gtj + resj - gtjresj
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = gtjresj / denominator
    return np.nanmean(iou)


def edam_do_python_eval(predict_dicts, masks, theta, num_cls=21):
    TP = [ctypes.c_int(0) for _ in range(num_cls)]  # multiprocessing.Value('i') holds a C int
    P = [ctypes.c_int(0) for _ in range(num_cls)]
    T = [ctypes.c_int(0) for _ in range(num_cls)]
    for predict_dict, gt in zip(predict_dicts, masks, strict=True):
        h, w = list(predict_dict.values())[0].shape
        tensor = np.zeros((num_cls, h, w), np.float32)
        for key in predict_dict.keys():
            tensor[key + 1] = predict_dict[key]
        tensor[0, :, :] = theta
        predict = np.argmax(tensor, axis=0).astype(np.uint8)
        cal = gt < 255
        mask = (predict == gt) * cal
        for i in range(num_cls):
            P[i].value += int(np.sum((predict == i) * cal))
            T[i].value += int(np.sum((gt == i) * cal))
            TP[i].value += int(np.sum((gt == i) * mask))
    IoU = [TP[i].value / (T[i].value + P[i].value - TP[i].value + 1e-10) for i in range(num_cls)]
    return np.mean(np.array(IoU))


def more_cam_to_label(cam, cls_label, bkg_thre):
    b, c, h, w = cam.shape
    cls_label_rep = cls_label.unsqueeze(-1).unsqueeze(-1).repeat([1, 1, h, w])
    valid_cam = cls_label_rep * cam
    cam_value, _pseudo_label = valid_cam.max(dim=1, keepdim=False)
    _pseudo_label += 1
    _pseudo_label[cam_value <= bkg_thre] = 0
    return _pseudo_label


def more_scores(label_trues, label_preds, num_classes=21):
    hist = np.zeros((num_classes, num_classes))
    for lt, lp in zip(label_trues, label_preds, strict=True):
        lt, lp = lt.flatten(), lp.flatten()
        mask = (lt >= 0) & (lt < num_classes)
        hist += np.bincount(num_classes * lt[mask].astype(int) + lp[mask],
                            minlength=num_classes ** 2).reshape(num_classes, num_classes)
    iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    return np.nanmean(iu[valid])


def more_eval(maps_by_class, masks, bkg_thre, num_classes=21):
    preds, gts = [], []
    for maps, gt in zip(maps_by_class, masks, strict=True):
        h, w = gt.shape
        cam = torch.zeros(1, num_classes - 1, h, w)
        for c, mp in maps.items():
            cam[0, c - 1] = torch.from_numpy(mp)
        present = np.bincount(gt.reshape(-1), minlength=256)
        cls_label = torch.zeros(1, num_classes - 1)
        for c in range(1, num_classes):
            if present[c]:
                cls_label[0, c - 1] = 1
        preds.append(more_cam_to_label(cam, cls_label, bkg_thre)[0].numpy().astype(np.int16))
        gts.append(gt.astype(np.int16))
    return more_scores(gts, preds, num_classes)


# ---------------------------------------------------------------------------------------------
# fixtures: maps whose classes differ from the masks', ties, thresholds hit exactly
# ---------------------------------------------------------------------------------------------


def make_split(tmp_path, n=7, seed=0, present=(1, 5, 9, 15)):
    rng = np.random.default_rng(seed)
    gt_dir, cam_dir = tmp_path / "gt", tmp_path / "cams"
    cam_dir.mkdir(parents=True)
    masks, maps = {}, {}
    for i in range(n):
        h, w = int(rng.integers(11, 17)), int(rng.integers(13, 19))
        cls = sorted(rng.choice(present, size=int(rng.integers(1, 3)), replace=False).tolist())
        m = np.zeros((h, w), np.uint8)
        for c in cls:
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y:y + h // 2, x:x + w // 2] = c
        m[0, :] = 255
        keys = list(cls)
        if i % 3 == 0:
            keys.append(20)  # a classifier false positive: a map for a class absent from the mask
        if i % 4 == 1 and len(keys) > 1:
            keys.pop(0)  # a class of the mask without a map
        keys = sorted(set(keys))
        s = rng.random((len(keys), h, w)).astype(np.float32)
        s[:, 1, :2] = np.float32(0.15)
        s[0, 2, :3] = np.float32(0.5)
        if len(keys) > 1:
            s[:, 3, :3] = 0.8  # a tie between classes
        iid = f"2007_{i:06d}"
        masks[iid] = m
        maps[iid] = dict(zip(keys, s, strict=True))
        write_index_png(gt_dir / f"{iid}.png", m, VOC.palette)
    return gt_dir, cam_dir, masks, maps


def write_irn(cam_dir, maps):
    for iid, d in maps.items():
        keys = sorted(d)
        hr = np.stack([d[k] for k in keys])
        # exactly as make_cam.py: keys and cam are torch tensors, high_res a numpy array
        np.save(cam_dir / f"{iid}.npy", {"keys": torch.tensor(keys) - 1, "cam": torch.from_numpy(hr[:, ::4, ::4].copy()),
                                         "high_res": hr})


def write_edam(cam_dir, maps):
    for iid, d in maps.items():
        np.save(cam_dir / f"{iid}.npy", {k - 1: v for k, v in d.items()})


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["gt", "maps"])
def test_irn_eval_cam_number_is_reproduced(tmp_path, labels):
    gt_dir, cam_dir, masks, maps = make_split(tmp_path)
    write_irn(cam_dir, maps)
    truth = GroundTruth.from_folder(gt_dir, VOC)
    rec, _ = eval_cams(cam_dir, truth, workers=0, label_source=labels, official="irn")
    ids = sorted(masks)
    cam_dicts = [{"keys": np.asarray(sorted(maps[i])) - 1, "high_res": np.stack([maps[i][k] for k in sorted(maps[i])])}
                 for i in ids]
    ref = irn_eval_cam(cam_dicts, [masks[i] for i in ids], 0.15)
    assert rec["official"]["miou"] == ref
    assert rec["official"]["script"] == "irn" and rec["official"]["threshold"] == 0.15
    if labels == "maps":  # same label set: the protocol number differs only in summation order
        assert rec["native"]["miou"] == pytest.approx(ref, abs=1e-12)


def test_irn_matrix_grows_with_predictions_on_ignored_pixels():
    # class 20 predicted only on ignored pixels: chainercv's matrix is 21 wide, nanmean skips it
    conf = np.zeros((22, 21), np.int64)
    conf[0, 0], conf[3, 3], conf[3, 0], conf[0, 3] = 50, 20, 5, 7
    conf[21, 20] = 4  # the extra row: ignored pixels by predicted class
    v = irn_miou(conf)
    labels = [np.array([0] * 57 + [3] * 25 + [-1] * 4), ]
    preds = [np.array([0] * 50 + [3] * 7 + [3] * 20 + [0] * 5 + [20] * 4)]
    c = chainercv_confusion(preds, labels)
    assert c.shape == (21, 21)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(c) / (c.sum(1) + c.sum(0) - np.diag(c))
    assert v == np.nanmean(iou)


def test_edam_eval_number_is_reproduced_and_differs_from_the_protocol(tmp_path):
    gt_dir, cam_dir, masks, maps = make_split(tmp_path, seed=3)
    write_edam(cam_dir, maps)
    truth = GroundTruth.from_folder(gt_dir, VOC)
    rec, _ = eval_cams(cam_dir, truth, workers=0, label_source="maps", official="edam", native=0.5)
    ids = sorted(masks)
    ref = edam_do_python_eval([{k - 1: v for k, v in maps[i].items()} for i in ids], [masks[i] for i in ids], 0.5)
    assert rec["official"]["miou"] == ref
    # the split holds 5 of 21 classes: EDAM averages 16 zeros in, the protocol does not
    assert rec["native"]["miou"] > 2 * rec["official"]["miou"]
    assert rec["official"]["label_set"] == "maps"


def test_edam_counters_wrap_like_its_c_ints():
    conf = np.zeros((3, 3), np.int64)
    conf[0, 0] = 3_000_000_000  # past 2^31: EDAM's multiprocessing.Value('i') wraps
    conf[1, 1], conf[1, 0], conf[2, 2] = 10, 5, 7
    TP = [ctypes.c_int(int(v)).value for v in np.diag(conf)]
    P = [ctypes.c_int(int(v)).value for v in conf.sum(0)]
    T = [ctypes.c_int(int(v)).value for v in conf.sum(1)]
    ref = np.mean(np.array([TP[i] / (T[i] + P[i] - TP[i] + 1e-10) for i in range(3)]))
    assert edam_miou(conf) == ref


@pytest.mark.parametrize("labels", ["gt", "maps"])
def test_toco_scores_number_is_reproduced(tmp_path, labels):
    gt_dir, cam_dir, masks, maps = make_split(tmp_path, seed=5)
    write_irn(cam_dir, maps)
    truth = GroundTruth.from_folder(gt_dir, VOC)
    rec, _ = eval_cams(cam_dir, truth, workers=0, label_source=labels, official="toco")
    ids = sorted(masks)
    ref = more_eval([maps[i] for i in ids], [masks[i] for i in ids], 0.5)
    assert rec["official"]["miou"] == ref
    assert rec["official"]["label_set"] == "gt"


def test_official_functions_on_the_same_counts_differ_as_documented():
    rng = np.random.default_rng(2)
    C = 21
    ev = SweepEvaluator(C, native_rule=0.3)
    for i in range(5):
        gt = np.zeros((10, 12), np.uint8)
        gt[2:8, 3:9] = [4, 7][i % 2]
        gt[0] = 255
        s = rng.random((2, 10, 12)).astype(np.float32)
        ev.update(s, [4, 11], gt, image_id=str(i))  # class 11 predicted, never in the gt
    conf = ev.native_confusion(with_ignore=True)
    protocol = ev.results()["native"]["miou"]
    assert irn_miou(conf) == pytest.approx(protocol, abs=1e-12)  # nanmean over the same classes
    assert toco_miou(conf) > protocol  # class 11 (IoU 0) dropped: absent from the gt
    assert edam_miou(conf) < protocol / 4  # all 21 classes averaged
    assert official_miou("toco", conf) == toco_miou(conf)
    with pytest.raises(ValueError):
        official_miou("deeplab", conf)


def test_adapters_map_to_their_scripts():
    assert ADAPTER_SCRIPTS == {"cam": "irn", "edam": "edam", "more": "toco"}
    conf = np.diag([5, 3, 0]).astype(np.int64)
    assert official_for_adapter("getam", conf) is None
    e = official_for_adapter("cam", conf)
    assert e["script"] == "irn" and e["miou"] == 1.0 and "eval_cam.py" in e["source"]
