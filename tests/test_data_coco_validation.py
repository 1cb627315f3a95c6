"""The COCO instances JSON is validated once, before any work: each bad value is one error naming
the JSON file, the image and the annotation, nothing is written, and valid input still builds the
pycocotools reference masks."""

from __future__ import annotations

import copy
import errno
import json
import tracemalloc

import numpy as np
import pytest
import test_data_coco_fuzz as fz
from pycocotools.coco import COCO as PyCOCO

from wsss_bench.data.check import check_dataset
from wsss_bench.data.coco import (
    MAX_IMAGE_PIXELS,
    MAX_OUTLINE_PIXELS,
    ann_to_mask,
    load_instances,
    prepare_coco_masks,
    rle_string_counts,
    semantic_mask,
    validate_instances,
)
from wsss_bench.errors import WsssBenchError

IMG42 = "image 42 (COCO_val2014_000000000042.jpg)"
IMG7 = "image 7 (COCO_val2014_000000000007.jpg)"


def _ann(i):
    return lambda d: d["annotations"][i]


def setter(where, key, value):
    return lambda d: where(d).__setitem__(key, value)


def deleter(where, key):
    return lambda d: where(d).pop(key)


A0, A1, A3, A4 = _ann(0), _ann(1), _ann(3), _ann(4)
RLE3 = lambda d: d["annotations"][3]["segmentation"]  # noqa: E731 - crowd, uncompressed, 30x40
RLE4 = lambda d: d["annotations"][4]["segmentation"]  # noqa: E731 - compressed, 24x28
IM0 = lambda d: d["images"][0]  # noqa: E731 - id 42, 30x40

# (name, mutation, fragments the one-line message must contain)
BAD = [
    ("no image_id", deleter(A0, "image_id"), ["annotation 1 (annotations[0])", "no image_id"]),
    ("string image_id", setter(A0, "image_id", "42"), ["annotation 1 (annotations[0])", "image_id '42' is not an integer"]),
    ("bool image_id", setter(A0, "image_id", True), ["annotations[0]", "image_id True"]),
    ("float image_id", setter(A0, "image_id", 42.0), ["annotations[0]", "image_id 42.0"]),
    ("unknown image_id", setter(A0, "image_id", 9999), ["annotation 1 (annotations[0])", "image_id 9999 is not the id"]),
    ("annotations null", lambda d: d.__setitem__("annotations", None), ["'annotations' is None, not a list"]),
    ("images object", lambda d: d.__setitem__("images", {}), ["'images' is {}, not a list"]),
    ("annotation not an object", lambda d: d["annotations"].__setitem__(2, [1]), ["annotations[2] is [1]"]),
    ("image not an object", lambda d: d["images"].__setitem__(2, "x"), ["images[2] is 'x'"]),
    ("image id string", setter(IM0, "id", "42"), ["images[0]: id '42' is not an integer"]),
    ("duplicate image id", setter(lambda d: d["images"][2], "id", 42), ["image 42 (COCO_val2014_000000000009.jpg)",
                                                                       "also the id of image"]),
    ("duplicate stem", setter(lambda d: d["images"][2], "file_name", "COCO_val2014_000000000042.jpg"),
     ["image 9 (COCO_val2014_000000000042.jpg)", "also the stem of image 42"]),
    ("file_name not a string", setter(IM0, "file_name", 7), ["image 42 (images[0])", "file_name 7"]),
    ("file_name escaping", setter(IM0, "file_name", "a\x00b.jpg"), ["image 42", "NUL"]),
    ("height 0", setter(IM0, "height", 0), [IMG42, "height 0 is not a positive integer"]),
    ("height string", setter(IM0, "height", "30"), [IMG42, "height '30'"]),
    ("width float", setter(IM0, "width", 40.0), [IMG42, "width 40.0"]),
    ("absurd size", lambda d: IM0(d).update(height=200000, width=200000),
     [IMG42, "200000x200000 is over the cap of 50,000,000 pixels"]),
    ("polygon of 4 numbers", setter(A0, "segmentation", [[2, 2, 30, 20]]),
     [f"annotation 1 (annotations[0]) of {IMG42}", "polygon 0 has 4 numbers", "as a box"]),
    ("polygon of 2 numbers", setter(A0, "segmentation", [[2, 2]]), ["polygon 0 has 2 numbers"]),
    ("second part short", setter(A0, "segmentation", [[2, 2, 30, 2, 30, 20], [1, 1]]), ["polygon 1 has 2 numbers"]),
    ("odd count", setter(A0, "segmentation", [[2, 2, 30, 2, 30, 20, 5]]), ["polygon 0 has 7 numbers"]),
    ("string coordinate", setter(A0, "segmentation", [[2, 2, "30", 2, 30, 20]]), ["coordinate '30' is not a number"]),
    ("NaN coordinate", setter(A0, "segmentation", [[2, 2, float("nan"), 2, 30, 20]]), ["coordinate nan is not finite"]),
    ("inf coordinate", setter(A0, "segmentation", [[2, 2, 30, float("inf"), 30, 20]]), ["coordinate inf is not finite"]),
    ("far coordinate", setter(A0, "segmentation", [[2, 2, 30, 2, 1e9, 20]]),
     ["x coordinate 1000000000.0 is more than one image side outside", "allowed -40..80"]),
    ("flat polygon", setter(A0, "segmentation", [2, 2, 30, 2, 30, 20]), ["polygon 0 holds 2, not a polygon"]),
    ("list of RLEs", setter(A0, "segmentation", [{"size": [30, 40], "counts": [1200]}]), ["polygon 0 holds {"]),
    ("segmentation string", setter(A0, "segmentation", "poly"), ["segmentation 'poly' is neither"]),
    ("RLE counts overrun", setter(RLE3, "counts", [0, 60000]),
     [f"annotation 4 (annotations[3]) of {IMG42}", "RLE counts sum to 60000, not height x width = 1200"]),
    ("RLE counts short", setter(RLE3, "counts", [10, 20]), ["RLE counts sum to 30"]),
    ("RLE count negative", setter(RLE3, "counts", [1300, -100]), ["RLE count -100 is negative"]),
    ("RLE count float", setter(RLE3, "counts", [600.0, 600]), ["RLE count 600.0 is not an integer"]),
    ("RLE size", setter(RLE3, "size", [9, 9]), ["RLE size [9, 9] differs from image size [30, 40]"]),
    ("RLE without counts", deleter(RLE3, "counts"), ["RLE segmentation needs 'size' and 'counts'"]),
    ("compressed RLE unterminated", setter(RLE4, "counts", "0P"),
     [f"annotation 5 (annotations[4]) of {IMG7}", "not a valid pycocotools string"]),
    ("compressed RLE garbage", setter(RLE4, "counts", "~~"), ["not a valid pycocotools string"]),
    ("compressed RLE total", setter(RLE4, "counts", "52"), ["RLE counts sum to 7, not height x width = 672"]),
    ("area string", setter(A0, "area", "600"), ["area '600' is not a finite number >= 0"]),
    ("area NaN", setter(A0, "area", float("nan")), ["area nan"]),
    ("area negative", setter(A0, "area", -1), ["area -1"]),
    ("area beyond a float", setter(A0, "area", 10 ** 400), ["area 1000000000", "... is not a finite number"]),
    ("coordinate beyond a float", setter(A0, "segmentation", [[2, 2, 10 ** 400, 2, 30, 20]]),
     ["x coordinate 100000000", "... is more than one image side outside"]),
    ("category list", setter(A0, "category_id", [1]), ["category id [1] is not a COCO category"]),
    ("category unknown", setter(A0, "category_id", 12), ["category id 12 is not a COCO category"]),
    ("category string", setter(A0, "category_id", "1"), ["category id '1'"]),
    ("iscrowd string", setter(A0, "iscrowd", "0"), ["iscrowd '0' is not 0 or 1"]),
    ("annotation id missing", deleter(A1, "id"), [f"annotations[1] of {IMG42}", "id None is not an integer"]),
    ("annotation id repeated", setter(A1, "id", 1), ["annotation 1 (annotations[1])", "also the id of annotations[0]"]),
]


@pytest.mark.parametrize("name,mutate,fragments", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_error_naming_file_image_and_annotation_and_nothing_is_written(
        coco_tree, tmp_path, name, mutate, fragments):
    data = copy.deepcopy(coco_tree.data)
    mutate(data)
    coco_tree.ann_file.write_text(json.dumps(data))
    cache = tmp_path / "cache"
    with pytest.raises(WsssBenchError) as e:
        prepare_coco_masks(coco_tree.root, "val", cache=cache, workers=2)
    msg = str(e.value)
    assert e.value.path == str(coco_tree.ann_file) and msg.startswith(str(coco_tree.ann_file) + ": ")
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    assert not cache.exists()  # validated before the cache folder is made


def test_the_annotations_of_a_rejected_image_are_not_reported_again(coco_tree):
    data = copy.deepcopy(coco_tree.data)
    data["images"][0]["height"] = -1  # image 42 has 4 annotations
    with pytest.raises(WsssBenchError) as e:
        validate_instances(data, coco_tree.ann_file)
    assert "height -1" in str(e.value) and "more problem" not in str(e.value)


def test_every_problem_is_counted_and_datasets_check_lists_them_all(coco_tree):
    data = copy.deepcopy(coco_tree.data)
    data["annotations"][0]["category_id"] = 12
    data["annotations"][1]["area"] = "x"
    data["annotations"][5]["segmentation"] = [[1, 2]]
    coco_tree.ann_file.write_text(json.dumps(data))
    with pytest.raises(WsssBenchError, match=r"category id 12 .*\(and 2 more problems; `wsss-bench datasets check"):
        load_instances(coco_tree.ann_file)
    report = check_dataset("coco", coco_tree.root, ["val"])
    from_json = [p for p in report.errors if p.path == str(coco_tree.ann_file)]
    assert [p.message.split(": ", 1)[0] for p in from_json] == [
        f"annotation 1 (annotations[0]) of {IMG42}", f"annotation 2 (annotations[1]) of {IMG42}",
        f"annotation 6 (annotations[5]) of {IMG7}"]


@pytest.mark.parametrize("variant", ["bom", "segmentation null", "segmentation empty", "no area", "no iscrowd",
                                     "slightly outside", "extra keys", "bool iscrowd", "integer coordinates"])
def test_accepted_variants_build_the_pycocotools_reference(coco_tree, variant):
    data = copy.deepcopy(coco_tree.data)
    a = data["annotations"]
    if variant == "segmentation null":
        a[1]["segmentation"] = None
    elif variant == "segmentation empty":
        a[2]["segmentation"] = []
    elif variant == "no area":
        del a[1]["area"], a[2]["area"]
    elif variant == "no iscrowd":
        del a[0]["iscrowd"]
    elif variant == "slightly outside":
        a[0]["segmentation"] = [[-39.5, -0.5, 79.5, -0.5, 79.5, 59.5, -39.5, 59.5]]
    elif variant == "extra keys":
        a[0]["note"] = {"x": [1, None]}
        data["info"] = None
    elif variant == "bool iscrowd":
        a[3]["iscrowd"] = True
    elif variant == "integer coordinates":
        a[2]["segmentation"] = [[int(v) for v in p] for p in a[2]["segmentation"]]
    text = json.dumps(data)
    coco_tree.ann_file.write_bytes((b"\xef\xbb\xbf" if variant == "bom" else b"") + text.encode())
    images, by_image = load_instances(coco_tree.ann_file)
    want = fz.reference_masks(data, "ignore")
    for info in images:
        got = semantic_mask(by_image.get(info["id"], []), info["height"], info["width"])
        np.testing.assert_array_equal(got, want[info["stem"]])


def test_an_absurd_image_size_is_refused_before_any_allocation():
    tracemalloc.start()
    try:
        with pytest.raises(WsssBenchError, match="over the cap"):
            semantic_mask([{"id": 1, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]]}], 200000, 200000)
        with pytest.raises(WsssBenchError, match="over the cap"):
            ann_to_mask({"id": 1, "segmentation": None}, 7072, 7071)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # numpy reports its buffers to tracemalloc; 37 GiB would show
    assert 7071 * 7071 <= MAX_IMAGE_PIXELS < 7072 * 7071
    assert semantic_mask([], 1, MAX_IMAGE_PIXELS // 1000).shape == (1, MAX_IMAGE_PIXELS // 1000)


def _zigzag(n: int, w: int, h: int) -> list[float]:
    return [float(v) for k in range(n) for v in ((0, 0) if k % 2 else (w, h))]


def test_a_polygon_outline_over_the_cap_is_refused_and_one_under_it_matches_pycocotools():
    h, w = 30, 40
    # each edge of the zigzag spans max(40, 30) = 40 pixels
    too_long = MAX_OUTLINE_PIXELS // 40 + 2
    with pytest.raises(WsssBenchError, match="outline is .* pixels long, over the cap"):
        semantic_mask([{"id": 1, "category_id": 1, "segmentation": [_zigzag(too_long, w, h)]}], h, w)
    ok = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [_zigzag(2000, w, h)], "area": 5.0, "iscrowd": 0}
    coco = PyCOCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w, "file_name": "x.jpg"}], "annotations": [ok]}
    coco.createIndex()
    np.testing.assert_array_equal(ann_to_mask(ok, h, w), coco.annToMask(ok))


def test_compressed_rle_strings_decoded_by_hand():
    # '5' = 53 - 48 = 5 (no continuation, no sign), '2' = 2
    assert rle_string_counts("52") == [5, 2]
    # from the fourth count on, each is a difference from the count two places back: 1 + 1 = 2
    assert rle_string_counts("1111") == [1, 1, 1, 2]
    # '@' = 16: the sign bit of a last group, so 16 - 32 = -16
    assert rle_string_counts("@") == [-16]
    # 'P' = 32: continuation bit; '1' = 1 -> 0 + (1 << 5) = 32
    assert rle_string_counts("P1") == [32]
    assert rle_string_counts("P") is None              # ends inside a count (rleFrString reads past the end)
    assert rle_string_counts("PPPPPP1") is None        # 7 groups: past the width of an int
    assert rle_string_counts("/") is None and rle_string_counts("p") is None  # outside '0'..'o'
    assert rle_string_counts("") == []


def test_a_write_error_in_a_worker_names_the_mask_file(coco_tree, tmp_path, monkeypatch):
    import wsss_bench.data.coco as coco_mod

    def full_disk(path, mask):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(coco_mod, "write_mask_png", full_disk)
    with pytest.raises(WsssBenchError, match="cannot write the mask \\(No space left on device\\)") as e:
        prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "c", workers=1)
    assert e.value.path.endswith(".png") and e.value.path.startswith(str(tmp_path / "c" / "val2014"))
    # the manifest says incomplete, so a later prepare resumes instead of trusting the cache
    assert json.loads((tmp_path / "c" / "val2014" / "manifest.json").read_text())["complete"] is False


def test_a_cache_path_through_a_file_and_bad_worker_counts_fail_before_any_work(coco_tree, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WsssBenchError, match="is not a folder") as e:
        prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "f", workers=1)
    assert e.value.path == str(tmp_path / "f")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "val2014").write_text("x")
    with pytest.raises(WsssBenchError, match="is not a folder") as e:
        prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "g", workers=1)
    assert e.value.path == str(tmp_path / "g" / "val2014")
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(WsssBenchError, match="workers must be a whole number >= 1"):
            prepare_coco_masks(coco_tree.root, "val", cache=tmp_path / "h", workers=bad)
    with pytest.raises(WsssBenchError, match="workers must be a whole number >= 1"):
        check_dataset("coco", coco_tree.root, ["val"], workers=-1)
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("edit,fragment", [
    ({"ids": 5}, "'ids' is 5"), ({"options": []}, "'options' is []"), ({"complete": "yes"}, "'complete' is 'yes'"),
    ({"empty_ids": None}, "'empty_ids' is None"), ({"ids": ["../x"]}, "escapes the dataset root"),
    ({"ids": [3]}, "3 is not a string"), ({"extra": 1}, "unknown key 'extra'")])
def test_a_tampered_cache_manifest_is_an_error_naming_it(coco_tree, edit, fragment):
    from wsss_bench.data import build_dataset

    res = prepare_coco_masks(coco_tree.root, "val", workers=1)
    man = json.loads(res.manifest.read_text())
    res.manifest.write_text(json.dumps({**man, **edit}))
    with pytest.raises(WsssBenchError) as e:
        build_dataset("coco", coco_tree.root, "val")
    assert e.value.path == str(res.manifest) and fragment in e.value.message
    res.manifest.write_text("[1, 2]")
    with pytest.raises(WsssBenchError, match="not a JSON object"):
        build_dataset("coco", coco_tree.root, "val")


def test_unreadable_json_is_named(coco_tree):
    for raw, fragment in ((b"", "Expecting value"), (b"[" * 100000, "nested too deeply"),
                          (b'{"images": [\xe9]}', "codec can't decode"), (b"[1]", "the top level is a list")):
        coco_tree.ann_file.write_bytes(raw)
        with pytest.raises(WsssBenchError, match=fragment) as e:
            load_instances(coco_tree.ann_file)
        assert e.value.path == str(coco_tree.ann_file)
    coco_tree.ann_file.unlink()
    coco_tree.ann_file.mkdir()
    with pytest.raises(WsssBenchError, match="annotation file is a folder"):
        prepare_coco_masks(coco_tree.root, "val", workers=1)
