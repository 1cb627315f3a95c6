"""Split list files: encodings and line endings, duplicates, and ids that would leave the dataset
root; the VOC test split read for the test-server export."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss_bench.data import build_dataset
from wsss_bench.data.check import check_dataset
from wsss_bench.data.layout import MAX_ID_BYTES, read_id_list
from wsss_bench.data.voc import voc_test_image_sizes
from wsss_bench.errors import WsssBenchError

TRAIN = ["2007_000001", "2007_000002", "2007_000003"]


def _write(voc_tree, raw: bytes, split: str = "train"):
    p = voc_tree.root / "ImageSets" / "Segmentation" / f"{split}.txt"
    p.write_bytes(raw)
    return p


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbf2007_000001\n2007_000002\n2007_000003\n",              # UTF-8 byte-order mark
    b"2007_000001\r\n2007_000002\r\n2007_000003\r\n",                   # CRLF
    b"2007_000001\r2007_000002\r2007_000003",                           # old Mac CR, no final newline
    b"\xef\xbb\xbf\r\n2007_000001\r\n\r\n  \t\r\n2007_000002\n\n2007_000003\n\n",  # BOM, blank lines, mixed
    b" 2007_000001  \n\t2007_000002\n2007_000003 \n",                   # spaces around the ids
], ids=["bom", "crlf", "cr", "bom-blank-mixed", "spaces"])
def test_list_forms_that_mean_the_same_ids(voc_tree, raw):
    _write(voc_tree, raw)
    ds = build_dataset("voc", voc_tree.root, "train")
    assert ds.ids == TRAIN and not ds.warnings[:-1]  # only the protocol-size warning
    assert ds[0].image.shape == (20, 24, 3)          # the first id names its real file (no BOM in it)
    assert check_dataset("voc", voc_tree.root, ["train"]).ok


def test_duplicate_ids_are_kept_once_with_a_warning_naming_the_file_and_line(voc_tree):
    p = _write(voc_tree, b"2007_000001\n2007_000002\n2007_000001\n2007_000003\n2007_000002\n")
    ds = build_dataset("voc", voc_tree.root, "train")
    assert ds.ids == TRAIN
    assert f"{p}: 2 duplicate image ids kept once (first: line 3, '2007_000001')" in ds.warnings
    r = check_dataset("voc", voc_tree.root, ["train"])
    assert r.ok and r.splits == {"train": 3}
    assert [(w.path, w.message) for w in r.warnings if "duplicate" in w.message] == [
        (str(p), "2 duplicate image ids kept once (first: line 3, '2007_000001')")]


@pytest.mark.parametrize("entry,fragment", [
    ("../../etc/passwd", "contains '..' and escapes the dataset root"),
    ("..\\..\\x", "contains '..' and escapes the dataset root"),
    ("/etc/passwd", "is an absolute path"),
    ("\\\\server\\share", "is an absolute path"),
    ("C:x", "is an absolute path"),
    ("sub/2007_000001", "is not a plain file-name stem"),
    (".", "is not a plain file-name stem"),
    ("2007\x00_1", "contains a NUL byte"),
    ("2007_000002\x1b[31m", "contains the non-printable character '\\x1b'"),
    ("2007\u200b_000002", "contains the non-printable character '\\u200b'"),
    ("a" * (MAX_ID_BYTES + 1), f"is {MAX_ID_BYTES + 1} bytes long, too long for a file name"),
    ("2007_000001 1", "2 fields '2007_000001 1'; expected one image id per line"),
    ("a b c", "3 fields"),
], ids=["dotdot", "backslash-dotdot", "absolute", "unc", "drive", "subdir", "dot", "nul", "escape", "zero-width",
        "too-long", "two-fields", "three-fields"])
def test_a_bad_entry_is_one_error_naming_the_list_file_and_line(voc_tree, entry, fragment):
    p = _write(voc_tree, f"2007_000001\n\n{entry}\n".encode())
    with pytest.raises(WsssBenchError) as e:
        build_dataset("voc", voc_tree.root, "train")
    assert e.value.path == str(p) and e.value.message.startswith("line 3: ")
    assert fragment in e.value.message and "\n" not in str(e.value)
    r = check_dataset("voc", voc_tree.root, ["train"])  # check reports it and goes on with the others
    assert [(x.path, x.message) for x in r.errors] == [(str(p), e.value.message)]
    assert r.splits == {"train": 1}


def test_an_id_of_the_longest_allowed_length_reads_its_files(voc_tree):
    iid = "b" * MAX_ID_BYTES
    src = voc_tree.root / "JPEGImages" / "2007_000001.jpg"
    (voc_tree.root / "JPEGImages" / f"{iid}.jpg").write_bytes(src.read_bytes())
    (voc_tree.root / "SegmentationClass" / f"{iid}.png").write_bytes(
        (voc_tree.root / "SegmentationClass" / "2007_000001.png").read_bytes())
    _write(voc_tree, f"{iid}\n".encode())
    ds = build_dataset("voc", voc_tree.root, "train")
    np.testing.assert_array_equal(ds[0].mask, voc_tree.masks["2007_000001"])


@pytest.mark.parametrize("raw,fragment", [
    (b"2007_000001\n2007_\xe9\n", "split list is not UTF-8 text (byte 17: invalid continuation byte)"),
    (b"", "split 'train' is empty"),
    (b"\n \r\n\t\n", "split 'train' is empty"),
], ids=["latin1", "empty", "only-blank"])
def test_unreadable_or_empty_lists_are_named(voc_tree, raw, fragment):
    p = _write(voc_tree, raw)
    with pytest.raises(WsssBenchError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as e:
        build_dataset("voc", voc_tree.root, "train")
    assert e.value.path == str(p)


def test_a_list_that_is_a_folder_is_named(voc_tree):
    p = voc_tree.root / "ImageSets" / "Segmentation" / "train.txt"
    p.unlink()
    p.mkdir()
    with pytest.raises(WsssBenchError, match="is a folder, not a split list file") as e:
        read_id_list(p)
    assert e.value.path == str(p)


def test_train_aug_two_column_form_cannot_escape_either(voc_tree):
    p = voc_tree.root / "ImageSets" / "Segmentation" / "train_aug.txt"
    p.write_text("/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
                 "/JPEGImages/../../x.jpg /SegmentationClassAug/x.png\n")
    with pytest.raises(WsssBenchError, match="line 2: 2 fields") as e:
        build_dataset("voc", voc_tree.root, "train_aug")
    assert e.value.path == str(p)


# -- the VOC test split, as export-voc-test reads it ------------------------------------------------------


def test_voc_test_image_sizes_reads_ids_like_every_split_and_decodes_each_image(voc_tree):
    ids, sizes = voc_test_image_sizes(voc_tree.root)
    assert ids == ["2009_000006", "2009_000007"] and sizes == {"2009_000006": (17, 19), "2009_000007": (17, 19)}
    _write(voc_tree, b"\xef\xbb\xbf2009_000006\r\n2009_000007\r\n2009_000006\r\n", "test")
    assert voc_test_image_sizes(voc_tree.root)[0] == ids


@pytest.mark.parametrize("entry", ["../../secret", "/etc/hostname", "x\x00", "JPEGImages/2009_000006"])
def test_a_test_id_outside_the_root_is_refused_naming_test_txt(voc_tree, tmp_path, entry):
    Image.new("RGB", (5, 5)).save(voc_tree.root.parent / "secret.jpg")
    p = _write(voc_tree, f"2009_000006\n{entry}\n".encode(), "test")
    with pytest.raises(WsssBenchError) as e:
        voc_test_image_sizes(voc_tree.root)
    assert e.value.path == str(p) and e.value.message.startswith("line 2: ")


@pytest.mark.parametrize("damage,fragment", [
    (lambda p: p.write_bytes(b"not a jpeg"), "cannot decode image (cannot identify image file"),
    (lambda p: p.write_bytes(p.read_bytes()[:150]), "cannot decode image ("),
    (lambda p: p.write_bytes(b""), "cannot decode image ("),
    (lambda p: p.unlink(), "test image '2009_000007' not found"),
    (lambda p: (p.unlink(), p.mkdir()), "test image '2009_000007' is a folder, not a file"),
], ids=["garbage", "truncated", "empty", "missing", "folder"])
def test_a_bad_test_image_is_one_error_naming_it(voc_tree, damage, fragment):
    p = voc_tree.root / "JPEGImages" / "2009_000007.jpg"
    damage(p)
    with pytest.raises(WsssBenchError) as e:
        voc_test_image_sizes(voc_tree.root)
    assert e.value.path == str(p) and fragment in e.value.message and "\n" not in str(e.value)


def test_header_only_mode_reads_sizes_without_decoding(voc_tree):
    p = voc_tree.root / "JPEGImages" / "2009_000007.jpg"
    p.write_bytes(p.read_bytes()[:-200])  # header intact, pixels cut short
    with pytest.raises(WsssBenchError, match="cannot decode image"):
        voc_test_image_sizes(voc_tree.root)
    assert voc_test_image_sizes(voc_tree.root, decode=False)[1]["2009_000007"] == (17, 19)


def test_train_aug_from_the_mask_folder_refuses_a_mask_name_no_list_could_hold(voc_tree):
    aug = voc_tree.root / "SegmentationClassAug"
    bad = aug / "2010_000011\x1b[2J.png"
    bad.write_bytes((aug / "2010_000008.png").read_bytes())
    with pytest.raises(WsssBenchError, match="non-printable character") as e:
        build_dataset("voc", voc_tree.root, "train_aug")
    assert e.value.path == str(bad)
    r = check_dataset("voc", voc_tree.root, ["train_aug"])
    assert [x.path for x in r.errors] == [str(bad)] and r.splits == {"train_aug": 6}
