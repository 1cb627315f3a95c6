"""``datasets check`` on each kind of broken tree: every problem names its file; errors exit non-zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_jpeg, write_palette_png
from PIL import Image

from wsss_bench.data.check import check_dataset
from wsss_bench.data.coco import prepare_coco_masks


def _errors(report):
    return [(p.path, p.message) for p in report.errors]


def test_a_clean_tree_has_no_errors_and_warns_about_split_sizes(voc_tree):
    r = check_dataset("voc", voc_tree.root, workers=1)
    assert r.ok, r.problems
    assert r.splits == {"train": 3, "val": 2, "test": 2, "train_aug": 6}
    assert r.images_checked == 3 + 2 + 2 + 6  # train_aug pairs its train ids with other (Aug) masks
    msgs = [p.message for p in r.warnings]
    assert any("1464" in m for m in msgs) and any("10582" in m for m in msgs)


def test_an_image_and_mask_pair_shared_by_splits_is_checked_once(voc_tree):
    r = check_dataset("voc", voc_tree.root, ["train", "trainval"])
    assert r.ok and r.splits == {"train": 3, "trainval": 5} and r.images_checked == 5


def test_missing_mask_is_named(voc_tree):
    p = voc_tree.root / "SegmentationClass" / "2007_000002.png"
    p.unlink()
    r = check_dataset("voc", voc_tree.root, ["train"])
    assert _errors(r) == [(str(p), "mask of id '2007_000002' not found")]


def test_missing_image_is_named(voc_tree):
    p = voc_tree.root / "JPEGImages" / "2008_000004.jpg"
    p.unlink()
    r = check_dataset("voc", voc_tree.root, ["val"])
    assert [e[0] for e in _errors(r)] == [str(p)]


def test_rgb_mask_is_named(voc_tree):
    p = voc_tree.root / "SegmentationClass" / "2007_000001.png"
    rgb = np.asarray(Image.open(p).convert("RGB"))
    Image.fromarray(rgb, mode="RGB").save(p)
    r = check_dataset("voc", voc_tree.root, ["train"])
    assert len(r.errors) == 1 and r.errors[0].path == str(p) and "mode RGB" in r.errors[0].message


def test_size_mismatch_is_named(voc_tree):
    p = voc_tree.root / "SegmentationClass" / "2008_000005.png"
    write_palette_png(p, np.zeros((10, 10), dtype=np.uint8))
    r = check_dataset("voc", voc_tree.root, ["val"])
    assert len(r.errors) == 1 and r.errors[0].path == str(p)
    assert "mask size 10x10 differs from image size 20x24" in r.errors[0].message


def test_out_of_range_value_is_named(voc_tree):
    p = voc_tree.root / "SegmentationClass" / "2007_000003.png"
    m = voc_tree.masks["2007_000003"].copy()
    m[0, 0], m[0, 1] = 21, 254
    write_palette_png(p, m)
    r = check_dataset("voc", voc_tree.root, ["train"])
    assert len(r.errors) == 1 and r.errors[0].path == str(p)
    assert "21, 254 outside the voc class set" in r.errors[0].message


@pytest.mark.parametrize("entry", ["../JPEGImages/2007_000001", "/etc/hostname"])
def test_path_escaping_the_root_is_named_with_its_list_file_and_line(voc_tree, entry):
    lst = voc_tree.root / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(f"2007_000001\n2007_000002\n{entry}\n")
    r = check_dataset("voc", voc_tree.root, ["train"])
    assert len(r.errors) == 1 and r.errors[0].path == str(lst)
    assert r.errors[0].message.startswith("line 3:") and "escapes the dataset root" in r.errors[0].message
    assert r.splits == {"train": 2}  # the remaining ids are still checked


def test_every_problem_is_reported_not_just_the_first(voc_tree):
    (voc_tree.root / "SegmentationClass" / "2007_000001.png").unlink()
    write_palette_png(voc_tree.root / "SegmentationClass" / "2008_000004.png", np.full((16, 26), 99, np.uint8))
    (voc_tree.root / "JPEGImages" / "2009_000006.jpg").write_bytes(b"not a jpeg")
    r = check_dataset("voc", voc_tree.root, ["train", "val", "test"], workers=2)
    paths = sorted(p for p, _ in _errors(r))
    assert paths == sorted([str(voc_tree.root / "SegmentationClass" / "2007_000001.png"),
                            str(voc_tree.root / "SegmentationClass" / "2008_000004.png"),
                            str(voc_tree.root / "JPEGImages" / "2009_000006.jpg")])


def test_xml_labels_are_checked_when_requested(voc_tree):
    p = voc_tree.root / "Annotations" / "2007_000002.xml"
    p.write_text("<annotation><object><name>dragon</name></object></annotation>")
    assert check_dataset("voc", voc_tree.root, ["train"]).ok
    r = check_dataset("voc", voc_tree.root, ["train"], labels="xml")
    assert _errors(r) == [(str(p), "object name 'dragon' is not a voc class")]


def test_missing_root_and_missing_list_are_errors(voc_tree, tmp_path):
    r = check_dataset("voc", tmp_path / "nope")
    assert _errors(r) == [(str(tmp_path / "nope"), "data root folder not found")]
    (voc_tree.root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    r = check_dataset("voc", voc_tree.root, ["val"])
    assert _errors(r) == [(str(voc_tree.root / "ImageSets" / "Segmentation" / "val.txt"),
                           "split list file not found")]


def test_coco_cache_and_raw_id_masks_are_checked(coco_tree, tmp_path):
    r = check_dataset("coco", coco_tree.root, ["val"])
    assert not r.ok and "datasets prepare coco" in r.errors[0].message
    prepare_coco_masks(coco_tree.root, "val", workers=1)
    r = check_dataset("coco", coco_tree.root, ["val"])
    assert r.ok and r.splits == {"val": 2} and any("40137" in p.message for p in r.warnings)
    bad = np.zeros((24, 28), dtype=np.uint8)
    bad[3, 3] = 12  # not a raw category id
    mdir = tmp_path / "raw"
    mdir.mkdir()
    Image.fromarray(bad, mode="L").save(mdir / "COCO_val2014_000000000007.png")
    r = check_dataset("coco", coco_tree.root, ["val"], masks=mdir, mask_ids="coco")
    assert _errors(r) == [(str(mdir / "COCO_val2014_000000000007.png"),
                           "mask value 12 is not a raw COCO category id (nor 0 or 255)")]


def test_cli_exits_nonzero_and_prints_the_path(voc_tree, capsys, tmp_path):
    from wsss_bench.cli import main

    assert main(["datasets", "check", "--dataset", "voc", "--data-root", str(voc_tree.root)]) == 0
    p = voc_tree.root / "SegmentationClass" / "2008_000005.png"
    p.unlink()
    out = tmp_path / "report.json"
    rc = main(["datasets", "check", "--dataset", "voc", "--data-root", str(voc_tree.root), "--split", "val",
               "--json", str(out)])
    assert rc == 2
    captured = capsys.readouterr()
    assert f"{p}: mask of id '2008_000005' not found" in captured.out
    assert "1 error(s), 1 warning(s)" in captured.err
    rep = json.loads(out.read_text())
    assert rep["ok"] is False
    assert [q["path"] for q in rep["problems"] if q["severity"] == "error"] == [str(p)]


def test_cli_prepare_and_synth(coco_tree, tmp_path, capsys):
    from wsss_bench.cli import main

    assert main(["datasets", "prepare", "coco", "--data-root", str(coco_tree.root), "--split", "val",
                 "--workers", "1"]) == 0
    assert "per 1,000 instances" in capsys.readouterr().out
    assert main(["datasets", "prepare", "coco", "--data-root", str(coco_tree.root), "--split", "val"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["datasets", "prepare", "voc", "--data-root", str(coco_tree.root)]) == 2
    assert main(["datasets", "synth", "--out", str(tmp_path / "s"), "--images", "5", "--seed", "2"]) == 0
    assert "4 train + 1 val" in capsys.readouterr().out
    assert main(["datasets", "check", "--dataset", "synthetic", "--data-root", str(tmp_path / "s")]) == 0
    write_jpeg(tmp_path / "s" / "JPEGImages" / "synth_00000.jpg", 50, 50, 0)
    assert main(["datasets", "check", "--dataset", "synthetic", "--data-root", str(tmp_path / "s")]) == 2
