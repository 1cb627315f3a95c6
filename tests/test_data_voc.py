"""PASCAL VOC 2012 layout: splits, palette masks, image-level labels, train_aug, safety, loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_bench.data import build_dataset, collate_samples
from wsss_bench.data.classes import VOC
from wsss_bench.errors import WsssBenchError


def _labels_of(mask: np.ndarray) -> np.ndarray:
    """Reference: multi-hot over the 20 foreground classes, by a loop over the pixels' values."""
    out = np.zeros(20, dtype=np.float32)
    for v in set(mask.reshape(-1).tolist()):
        if 1 <= v <= 20:
            out[v - 1] = 1
    return out


def test_splits_are_read_from_the_list_files(voc_tree):
    for split in ("train", "val", "trainval", "test"):
        ds = build_dataset("voc", voc_tree.root, split)
        assert ds.ids == voc_tree.splits[split]
        assert ds.split == split and ds.classes is VOC
    assert build_dataset("voc", voc_tree.root, "test").mask_path("2009_000006") is None


def test_root_may_be_the_devkit_folder_above_voc2012(voc_tree):
    ds = build_dataset("voc", voc_tree.root.parent.parent, "val")
    assert ds.root == voc_tree.root
    assert ds.ids == voc_tree.splits["val"]


def test_masks_are_palette_indices_and_labels_come_from_the_mask(voc_tree):
    ds = build_dataset("voc", voc_tree.root, "trainval")
    for i, iid in enumerate(ds.ids):
        s = ds[i]
        assert s.id == iid
        np.testing.assert_array_equal(s.mask, voc_tree.masks[iid])
        # the palette colours are not the indices: reading through RGB would give other values
        rgb = np.asarray(Image.open(ds.mask_path(iid)).convert("RGB"))
        assert not np.array_equal(rgb[..., 0], s.mask) or s.mask.max() == 0
        np.testing.assert_array_equal(s.labels, _labels_of(voc_tree.masks[iid]))
        assert s.image.dtype == np.uint8 and s.image.shape == s.mask.shape + (3,)


def test_labels_from_xml_name_every_object_including_difficult(voc_tree):
    ds = build_dataset("voc", voc_tree.root, "train", labels="xml")
    assert ds.label_source == "xml"
    for i, iid in enumerate(ds.ids):
        want = np.zeros(20, dtype=np.float32)
        for name in voc_tree.xml_names[iid]:  # first object is marked difficult in the fixture
            want[VOC.names.index(name) - 1] = 1
        np.testing.assert_array_equal(ds[i].labels, want)


def test_xml_with_a_name_outside_the_class_set_is_an_error_naming_it(voc_tree):
    bad = voc_tree.root / "Annotations" / "2007_000001.xml"
    bad.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    ds = build_dataset("voc", voc_tree.root, "train", labels="xml")
    with pytest.raises(WsssBenchError, match="unicorn") as e:
        ds[0]
    assert e.value.path == str(bad)


def test_test_split_has_no_masks_and_empty_labels(voc_tree):
    ds = build_dataset("voc", voc_tree.root, "test")
    s = ds[0]
    assert s.mask is None and s.labels.sum() == 0 and s.image.shape == (17, 19, 3)


def test_train_aug_is_aug_masks_minus_val_when_no_list(voc_tree):
    ds = build_dataset("voc", voc_tree.root, "train_aug")
    assert ds.ids == voc_tree.splits["train_aug"]
    assert not set(ds.ids) & set(voc_tree.splits["val"])
    assert ds.mask_path(ds.ids[0]).parent.name == "SegmentationClassAug"
    for i, iid in enumerate(ds.ids):
        np.testing.assert_array_equal(ds[i].mask, voc_tree.aug_masks[iid])
    assert any("10582" in w and "train_aug has 6" in w for w in ds.warnings)
    assert ds.describe()["warnings"] == ds.warnings


def test_train_aug_list_file_in_plain_and_deeplab_form(voc_tree):
    lst = voc_tree.root / "ImageSets" / "Segmentation" / "train_aug.txt"
    lst.write_text("2007_000001\n2010_000008\n")
    assert build_dataset("voc", voc_tree.root, "train_aug").ids == ["2007_000001", "2010_000008"]
    lst.write_text("/JPEGImages/2010_000009.jpg /SegmentationClassAug/2010_000009.png\n"
                   "/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n")
    assert build_dataset("voc", voc_tree.root, "train_aug").ids == ["2010_000009", "2007_000002"]


def test_train_aug_without_aug_masks_is_an_error_naming_the_folder(voc_tree):
    import shutil

    shutil.rmtree(voc_tree.root / "SegmentationClassAug")
    with pytest.raises(WsssBenchError, match="SegmentationClassAug") as e:
        build_dataset("voc", voc_tree.root, "train_aug")
    assert e.value.path.endswith("SegmentationClassAug")


def test_train_aug_list_without_aug_masks_gives_images_only(voc_tree):
    """Training a segmenter on pseudo labels needs the train_aug ids and images, not the SBD masks."""
    import shutil

    shutil.rmtree(voc_tree.root / "SegmentationClassAug")
    lst = voc_tree.root / "ImageSets" / "Segmentation" / "train_aug.txt"
    lst.write_text("2007_000001\n2010_000008\n")
    ds = build_dataset("voc", voc_tree.root, "train_aug")
    assert ds.ids == ["2007_000001", "2010_000008"] and not ds.has_masks()
    assert ds.image_path("2007_000001").is_file()
    assert any("no SegmentationClassAug" in w for w in ds.warnings)


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "sub/2007_000001", ".."])
def test_list_entry_that_would_leave_the_root_is_rejected(voc_tree, entry):
    lst = voc_tree.root / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(f"2007_000001\n{entry}\n")
    with pytest.raises(WsssBenchError, match="line 2") as e:
        build_dataset("voc", voc_tree.root, "train")
    assert e.value.path == str(lst)


def test_unknown_dataset_option_split_and_missing_root_are_errors(voc_tree, tmp_path):
    with pytest.raises(WsssBenchError, match="unknown dataset"):
        build_dataset("cityscapes", voc_tree.root, "train")
    with pytest.raises(WsssBenchError, match="unknown option 'crowd'"):
        build_dataset("voc", voc_tree.root, "train", crowd="ignore")
    with pytest.raises(WsssBenchError, match="labels"):
        build_dataset("voc", voc_tree.root, "train", labels="boxes")
    with pytest.raises(WsssBenchError, match="unknown voc split"):
        build_dataset("voc", voc_tree.root, "minival")
    missing = tmp_path / "nowhere"
    with pytest.raises(WsssBenchError, match="data root folder not found") as e:
        build_dataset("voc", missing, "train")
    assert e.value.path == str(missing)


def test_fingerprint_follows_mask_content(voc_tree):
    a = build_dataset("voc", voc_tree.root, "val").fingerprint()
    assert a == build_dataset("voc", voc_tree.root, "val").fingerprint()
    m = voc_tree.masks["2008_000004"].copy()
    m[0, 0] = 3 if m[0, 0] != 3 else 4
    from conftest import write_palette_png

    write_palette_png(voc_tree.root / "SegmentationClass" / "2008_000004.png", m)
    assert build_dataset("voc", voc_tree.root, "val").fingerprint() != a


def test_dataset_pickles_and_loads_with_dataloader_workers(voc_tree):
    ds = build_dataset("voc", voc_tree.root, "trainval", labels="xml")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids == ds.ids and clone.label_source == "xml"
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples)
    got = {s.id: s for batch in loader for s in batch}
    assert sorted(got) == sorted(ds.ids)
    for iid, s in got.items():
        np.testing.assert_array_equal(s.mask, voc_tree.masks[iid])
