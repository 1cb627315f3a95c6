"""The synthetic shapes generator: determinism, masks that agree with the drawn shapes, the dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from wsss_bench.data import build_dataset
from wsss_bench.data.classes import SYNTHETIC
from wsss_bench.data.synthetic import (
    MANIFEST_NAME,
    SHAPES_NAME,
    ensure_synthetic,
    generate,
    polygon_mask,
)
from wsss_bench.errors import WsssBenchError


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _reference_object(obj: dict, h: int, w: int) -> np.ndarray:
    """Independent rasterisation of one recorded object: matplotlib's point-in-polygon for polygons,
    the distance to the centre for circles and rings (pixel centres at +0.5)."""
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs + 0.5, ys + 0.5
    if "vertices" in obj:
        pts = np.stack([px.ravel(), py.ravel()], axis=1)
        return MplPath(np.asarray(obj["vertices"])).contains_points(pts).reshape(h, w)
    d = np.hypot(px - obj["cx"], py - obj["cy"])
    m = d <= obj["r"]
    if obj["kind"] == "ring":
        m &= d >= obj["r_inner"]
    return m


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a = _files(generate(tmp_path / "a", num_images=8, seed=5))
    b = _files(generate(tmp_path / "b", num_images=8, seed=5))
    c = _files(generate(tmp_path / "c", num_images=8, seed=6))
    assert a == b
    assert a.keys() == c.keys()
    assert a["JPEGImages/synth_00000.jpg"] != c["JPEGImages/synth_00000.jpg"]


def test_image_i_does_not_depend_on_the_number_of_images(tmp_path):
    a = generate(tmp_path / "a", num_images=4, seed=1)
    b = generate(tmp_path / "b", num_images=9, seed=1)
    for i in range(4):
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
            assert (a / sub / f"synth_{i:05d}.{ext}").read_bytes() == (b / sub / f"synth_{i:05d}.{ext}").read_bytes()


def test_masks_agree_with_the_drawn_shapes(synthetic_root):
    shapes = json.loads((synthetic_root / SHAPES_NAME).read_text())
    band_total = 0
    for iid, objs in shapes.items():
        mask = np.asarray(Image.open(synthetic_root / "SegmentationClass" / f"{iid}.png"))
        h, w = mask.shape
        ref = np.zeros((h, w), dtype=np.uint8)
        for obj in objs:  # painter's order: later objects occlude earlier ones
            ref[_reference_object(obj, h, w)] = obj["class"]
        labelled = mask != 255
        # every labelled pixel is what the recorded shapes say
        np.testing.assert_array_equal(mask[labelled], ref[labelled])
        # every ignore pixel lies on a border of the reference (a 4-neighbour has another label)
        pad = np.pad(ref, 1, mode="edge")
        border = np.zeros((h, w), dtype=bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            border |= pad[dy:dy + h, dx:dx + w] != ref
        assert border[~labelled].all()
        band_total += int((~labelled).sum())
        # and the band is thin: most of each object's pixels keep their label
        for c in {o["class"] for o in objs}:
            if (ref == c).sum() > 200:
                assert (mask == c).sum() >= 0.5 * (ref == c).sum()
    assert band_total > 0


def test_images_show_each_object_in_its_recorded_colour(synthetic_root):
    shapes = json.loads((synthetic_root / SHAPES_NAME).read_text())
    for iid, objs in list(shapes.items())[:10]:
        img = np.asarray(Image.open(synthetic_root / "JPEGImages" / f"{iid}.jpg")).astype(float)
        mask = np.asarray(Image.open(synthetic_root / "SegmentationClass" / f"{iid}.png"))
        top = objs[-1]  # the top object is fully visible
        inside = _reference_object(top, *mask.shape) & (mask == top["class"])
        mean = img[inside].mean(axis=0)
        assert np.abs(mean - np.clip(top["colour"], 0, 255)).max() < 30


def test_colour_does_not_give_the_class(tmp_path):
    root = generate(tmp_path / "s", num_images=80, seed=3)
    objs = [o for v in json.loads((root / SHAPES_NAME).read_text()).values() for o in v]
    cols = np.array([o["colour"] for o in objs], dtype=float)
    cls = np.array([o["class"] for o in objs])
    half = len(objs) // 2
    cents = {c: cols[:half][cls[:half] == c].mean(axis=0) for c in set(cls[:half].tolist())}
    pred = [min(cents, key=lambda c: np.abs(col - cents[c]).sum()) for col in cols[half:]]
    acc = float(np.mean(np.array(pred) == cls[half:]))
    assert acc < 0.4  # 5 classes: chance is 0.2; a colour-coded set would give ~1.0
    assert set(cls.tolist()) == {1, 2, 3, 4, 5}


def test_layout_sizes_splits_and_dataset(synthetic_root):
    ids = sorted(p.stem for p in (synthetic_root / "JPEGImages").glob("*.jpg"))
    assert len(ids) == 40
    sizes = {Image.open(synthetic_root / "JPEGImages" / f"{i}.jpg").size for i in ids}
    assert len(sizes) > 10 and all(96 <= s <= 128 for wh in sizes for s in wh)
    train = build_dataset("synthetic", synthetic_root, "train")
    val = build_dataset("synthetic", synthetic_root, "val")
    assert len(train) == 30 and len(val) == 10 and not set(train.ids) & set(val.ids)
    assert train.classes is SYNTHETIC
    shapes = json.loads((synthetic_root / SHAPES_NAME).read_text())
    for i in range(5):
        s = train[i]
        assert Image.open(train.mask_path(s.id)).mode == "P"
        present = {o["class"] for o in shapes[s.id]}
        assert 1 <= len(shapes[s.id]) <= 3
        # every drawn object stays visible, so the labels are exactly the drawn classes
        assert set((np.flatnonzero(s.labels) + 1).tolist()) == present
    with pytest.raises(WsssBenchError, match="unknown synthetic split"):
        build_dataset("synthetic", synthetic_root, "test")
    with pytest.raises(WsssBenchError, match="labels"):
        build_dataset("synthetic", synthetic_root, "train", labels="xml")


def test_ensure_synthetic_generates_only_when_missing_or_different(tmp_path):
    out = tmp_path / "demo"
    ensure_synthetic(out, num_images=6, seed=0, size=(96, 112))
    man = out / MANIFEST_NAME
    stamp = man.stat().st_mtime_ns
    os.utime(man, ns=(stamp - 10**9, stamp - 10**9))
    ensure_synthetic(out, num_images=6, seed=0, size=(96, 112))
    assert man.stat().st_mtime_ns == stamp - 10**9  # untouched
    ensure_synthetic(out, num_images=6, seed=1, size=(96, 112))
    assert json.loads(man.read_text())["seed"] == 1
    assert _files(out) == _files(generate(tmp_path / "ref", num_images=6, seed=1, size=(96, 112)))


def test_generate_refuses_a_folder_it_did_not_make(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(WsssBenchError, match="refusing"):
        generate(foreign, num_images=4)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(WsssBenchError, match="val is not empty"):
        generate(tmp_path / "tiny", num_images=3)
    assert not (tmp_path / "tiny").exists()


def test_polygon_mask_matches_matplotlib_on_a_concave_star():
    star = [(20 + (12 if k % 2 == 0 else 5) * np.cos(k * np.pi / 5), 18 + (12 if k % 2 == 0 else 5)
             * np.sin(k * np.pi / 5)) for k in range(10)]
    ours = polygon_mask(star, 36, 40)
    ref = _reference_object({"vertices": star}, 36, 40)
    assert ours.sum() > 100 and (ours != ref).sum() == 0
