"""COCO 2014: semantic masks checked pixel by pixel against an independent reference, the cache, raw ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO as PyCOCO

from wsss_bench.data import build_dataset
from wsss_bench.data.classes import COCO, COCO_CATEGORY_IDS
from wsss_bench.data.coco import (
    BUILDER_VERSION,
    ann_to_mask,
    prepare_coco_masks,
    remap_raw_ids,
    semantic_mask,
)
from wsss_bench.errors import WsssBenchError

CONTIGUOUS = {1: 1, 13: 12, 18: 17, 90: 80}  # raw id -> index, read off the COCO category list by hand


def reference_mask(coco: PyCOCO, img_id: int, crowd: str) -> np.ndarray:
    """Per-pixel reference: of the non-crowd instances covering a pixel the one with the smallest
    ``area`` (then the lowest id) gives the class; else a crowd region gives 255 (crowd=ignore) or 0.
    Binary masks come from pycocotools' own ``COCO.annToMask``."""
    info = coco.imgs[img_id]
    h, w = info["height"], info["width"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
    bins = [(a, coco.annToMask(a)) for a in anns]
    out = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            covering = [a for a, m in bins if m[y, x] and not a["iscrowd"]]
            if covering:
                best = min(covering, key=lambda a: (a["area"], a["id"]))
                out[y, x] = CONTIGUOUS[best["category_id"]]
            elif crowd == "ignore" and any(m[y, x] for a, m in bins if a["iscrowd"]):
                out[y, x] = 255
    return out


def test_contiguous_mapping_matches_hand_read_category_list():
    for raw, idx in CONTIGUOUS.items():
        assert COCO_CATEGORY_IDS.index(raw) + 1 == idx
    assert COCO.names[17] == "dog" and COCO.names[80] == "toothbrush" and COCO.names[12] == "stop sign"


def test_ann_to_mask_equals_pycocotools_ann_to_mask(coco_tree):
    coco = PyCOCO(str(coco_tree.ann_file))
    for ann in coco.dataset["annotations"]:
        info = coco.imgs[ann["image_id"]]
        np.testing.assert_array_equal(ann_to_mask(ann, info["height"], info["width"]), coco.annToMask(ann))


@pytest.mark.parametrize("crowd", ["ignore", "background"])
def test_semantic_masks_match_the_per_pixel_reference(coco_tree, crowd):
    coco = PyCOCO(str(coco_tree.ann_file))
    for img_id, info in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        got = semantic_mask(anns, info["height"], info["width"], crowd)
        np.testing.assert_array_equal(got, reference_mask(coco, img_id, crowd))


def test_hand_checked_pixels_of_the_overlap_and_crowd_image(coco_tree):
    coco = PyCOCO(str(coco_tree.ann_file))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[42]))
    m = semantic_mask(anns, 30, 40, "ignore")
    assert m[12, 15] == 17           # the small dog wins inside the big person
    assert m[5, 5] == 1              # person only
    assert m[20, 30] == 17           # the second dog over the person's right edge
    assert m[5, 34] == 255           # crowd outside any instance -> ignore
    assert m[5, 31] == 1             # crowd over the person: the instance keeps its pixel
    assert m[27, 6] == 17            # second polygon part of the two-part dog
    assert m[28, 38] == 0            # nothing there
    assert semantic_mask(anns, 30, 40, "background")[5, 34] == 0
    # image 7: raw ids 13 and 90 (with gaps) reach the mask as 12 and 80; equal areas: lower id wins
    anns7 = coco.loadAnns(coco.getAnnIds(imgIds=[7]))
    m7 = semantic_mask(anns7, 24, 28)
    assert m7[5, 5] == 12 and m7[18, 18] == 80 and m7[10, 10] == 12
    assert set(np.unique(m7).tolist()) == {0, 12, 80}


def test_unknown_category_and_rle_size_mismatch_are_errors():
    with pytest.raises(WsssBenchError, match="category id 12"):
        semantic_mask([{"id": 5, "category_id": 12, "segmentation": [[0, 0, 4, 0, 4, 4]], "area": 8}], 8, 8)
    rle = {"size": [9, 9], "counts": [81]}
    with pytest.raises(WsssBenchError, match="RLE size"):
        semantic_mask([{"id": 6, "category_id": 1, "segmentation": rle, "area": 0}], 8, 8)


def _read(p):
    return np.asarray(Image.open(p))


def test_prepare_builds_the_cache_and_the_dataset_reads_it(coco_tree):
    res = prepare_coco_masks(coco_tree.root, "val", workers=1)
    assert res.status == "built" and res.num_images == 3 and res.num_empty == 1 and res.num_instances == 6
    man = json.loads(res.manifest.read_text())
    assert man["builder_version"] == BUILDER_VERSION and man["options"] == {"crowd": "ignore"}
    assert man["complete"] is True and man["ids"] == coco_tree.ids_with_anns
    coco = PyCOCO(str(coco_tree.ann_file))
    ds = build_dataset("coco", coco_tree.root, "val")
    assert ds.ids == coco_tree.ids_with_anns  # the image without annotations is left out
    for i, iid in enumerate(ds.ids):
        s = ds[i]
        img_id = int(iid.rsplit("_", 1)[1])
        ref = reference_mask(coco, img_id, "ignore")
        np.testing.assert_array_equal(s.mask, ref)
        want = np.zeros(80, dtype=np.float32)
        for v in np.unique(ref):
            if 0 < v < 255:
                want[v - 1] = 1
        np.testing.assert_array_equal(s.labels, want)
        assert s.image.shape == ref.shape + (3,)
    kept = build_dataset("coco", coco_tree.root, "val", keep_empty=True)
    assert kept.ids == sorted(coco_tree.ids_with_anns + coco_tree.empty_ids)
    empty = kept[kept.ids.index(coco_tree.empty_ids[0])]
    assert empty.mask.shape == (20, 20) and not empty.mask.any() and not empty.labels.any()


def test_prepare_with_worker_processes_gives_identical_files(coco_tree, tmp_path):
    a = prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "a", workers=1)
    b = prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "b", workers=2)
    files = sorted(p.name for p in a.cache.glob("*.png"))
    assert files == sorted(p.name for p in b.cache.glob("*.png")) and len(files) == 3
    for f in files:
        assert (a.cache / f).read_bytes() == (b.cache / f).read_bytes()


def test_prepare_leaves_an_up_to_date_cache_and_rebuilds_a_stale_one(coco_tree):
    prepare_coco_masks(coco_tree.root, "val", workers=1)
    assert prepare_coco_masks(coco_tree.root, "val", workers=1).status == "up to date"
    again = prepare_coco_masks(coco_tree.root, "val", workers=1, crowd="background")
    assert again.status.startswith("rebuilt") and "crowd" in again.status
    m = _read(again.cache / "COCO_val2014_000000000042.png")
    assert m[5, 34] == 0


def test_stale_or_foreign_cache_is_detected_and_the_manifest_named(coco_tree):
    res = prepare_coco_masks(coco_tree.root, "val", workers=1)
    man_path = str(res.manifest)
    with pytest.raises(WsssBenchError, match="crowd=ignore, requested crowd=background") as e:
        build_dataset("coco", coco_tree.root, "val", crowd="background")
    assert e.value.path == man_path
    # annotation file changed after the cache was built
    data = json.loads(coco_tree.ann_file.read_text())
    data["annotations"][0]["area"] = 1.0
    coco_tree.ann_file.write_text(json.dumps(data))
    with pytest.raises(WsssBenchError, match="SHA-256") as e:
        build_dataset("coco", coco_tree.root, "val")
    assert e.value.path == man_path
    # older builder version, and an interrupted build
    prepare_coco_masks(coco_tree.root, "val", workers=1)
    man = json.loads(res.manifest.read_text())
    res.manifest.write_text(json.dumps({**man, "builder_version": BUILDER_VERSION - 1}))
    with pytest.raises(WsssBenchError, match="builder version") as e:
        build_dataset("coco", coco_tree.root, "val")
    assert e.value.path == man_path
    res.manifest.write_text(json.dumps({**man, "complete": False}))
    with pytest.raises(WsssBenchError, match="incomplete") as e:
        build_dataset("coco", coco_tree.root, "val")
    res.manifest.write_text(json.dumps({**man, "builder": "someone else"}))
    with pytest.raises(WsssBenchError, match="foreign"):
        build_dataset("coco", coco_tree.root, "val")


def test_missing_cache_tells_how_to_prepare_and_foreign_folder_is_not_overwritten(coco_tree, tmp_path):
    with pytest.raises(WsssBenchError, match="datasets prepare coco"):
        build_dataset("coco", coco_tree.root, "val")
    other = tmp_path / "other" / "val2014"
    other.mkdir(parents=True)
    (other / "precious.txt").write_text("mine")
    with pytest.raises(WsssBenchError, match="refusing") as e:
        prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "other", workers=1)
    assert e.value.path == str(other)
    assert (other / "precious.txt").read_text() == "mine"


def _write_grey(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def test_preconverted_masks_in_contiguous_and_raw_ids(coco_tree, tmp_path):
    raw = np.zeros((24, 28), dtype=np.uint8)
    raw[2:6, 2:6] = 90
    raw[10:14, 10:14] = 13
    raw[20:22, 0:3] = 255
    want = np.zeros_like(raw)
    want[2:6, 2:6] = 80
    want[10:14, 10:14] = 12
    want[20:22, 0:3] = 255
    big = np.zeros((30, 40), dtype=np.uint8)
    big[1:3, 1:3] = 18
    _write_grey(tmp_path / "raw" / "val2014" / "COCO_val2014_000000000007.png", raw)
    _write_grey(tmp_path / "raw" / "val2014" / "COCO_val2014_000000000042.png", big)
    ds = build_dataset("coco", coco_tree.root, "val", masks=tmp_path / "raw", mask_ids="coco")
    assert ds.ids == coco_tree.ids_with_anns
    s = ds[0]
    np.testing.assert_array_equal(s.mask, want)
    assert np.flatnonzero(s.labels).tolist() == [11, 79]
    assert np.flatnonzero(ds[1].labels).tolist() == [16]  # raw 18 (dog) -> 17
    _write_grey(tmp_path / "flat" / "COCO_val2014_000000000007.png", want)
    flat = build_dataset("coco", coco_tree.root, "val", masks=tmp_path / "flat")
    np.testing.assert_array_equal(flat[0].mask, want)
    assert flat.fingerprint() != ds.fingerprint()


def test_a_value_that_is_no_raw_category_id_is_an_error_naming_the_file(coco_tree, tmp_path):
    bad = np.zeros((24, 28), dtype=np.uint8)
    bad[0, 0] = 12  # a gap in the raw ids
    p = tmp_path / "m" / "COCO_val2014_000000000007.png"
    _write_grey(p, bad)
    ds = build_dataset("coco", coco_tree.root, "val", masks=tmp_path / "m", mask_ids="coco")
    with pytest.raises(WsssBenchError, match="12 is not a raw COCO category id") as e:
        ds[0]
    assert e.value.path == str(p)
    with pytest.raises(WsssBenchError, match="not a raw COCO"):
        remap_raw_ids(np.array([[91]], dtype=np.uint8))
    # the same value read as contiguous is a valid class (12 = stop sign)
    assert build_dataset("coco", coco_tree.root, "val", masks=tmp_path / "m")[0].labels[11] == 1


def test_coco_option_errors(coco_tree, tmp_path):
    with pytest.raises(WsssBenchError, match="mask_ids=coco applies"):
        build_dataset("coco", coco_tree.root, "val", mask_ids="coco")
    with pytest.raises(WsssBenchError, match="must be one of"):
        build_dataset("coco", coco_tree.root, "val", crowd="maybe")
    with pytest.raises(WsssBenchError, match="unknown option 'labels'"):
        build_dataset("coco", coco_tree.root, "val", labels="xml")
    with pytest.raises(WsssBenchError, match="COCO image folder not found"):
        build_dataset("coco", coco_tree.root, "train")


def test_an_interrupted_prepare_is_resumed(coco_tree):
    res = prepare_coco_masks(coco_tree.root, "val", workers=1)
    png = res.cache / "COCO_val2014_000000000042.png"
    want = png.read_bytes()
    man = json.loads(res.manifest.read_text())
    res.manifest.write_text(json.dumps({**man, "complete": False}))
    png.unlink()
    again = prepare_coco_masks(coco_tree.root, "val", workers=2)
    assert again.status == "resumed" and png.read_bytes() == want
    assert json.loads(res.manifest.read_text())["complete"] is True
    assert len(build_dataset("coco", coco_tree.root, "val")) == 2


def test_a_bad_annotation_fails_prepare_naming_the_image(coco_tree):
    data = json.loads(coco_tree.ann_file.read_text())
    data["annotations"][4]["category_id"] = 83  # a gap in the raw ids
    coco_tree.ann_file.write_text(json.dumps(data))
    for workers in (1, 2):
        with pytest.raises(WsssBenchError, match="COCO_val2014_000000000007.*category id 83"):
            prepare_coco_masks(coco_tree.root, "val", workers=workers, force=True)
