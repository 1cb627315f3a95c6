"""Corrupt, truncated or hostile image and mask files anywhere in the data layer (VOC, COCO, the
synthetic layout) are one-line errors naming the file: raised in DataLoader worker processes and
carried back to the main process (``CarryUserErrors``), and reported by ``datasets check``."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_bench.data import build_dataset
from wsss_bench.data.check import check_dataset
from wsss_bench.data.coco import prepare_coco_masks
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import CarryUserErrors, WsssBenchError, raise_carried

IMG = "JPEGImages/2007_000002.jpg"
MSK = "SegmentationClass/2007_000002.png"


def png_claiming(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims a w x h image (a decompression bomb's first bytes)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _png(arr: np.ndarray, mode: str | None = None):
    def write(p):
        Image.fromarray(arr, mode=mode).save(p, format="PNG")
    return write


def _replace(p, content):
    if p.is_dir():
        p.rmdir()
    else:
        p.unlink()
    if callable(content):
        content(p)
    elif content is not None:
        p.write_bytes(content)


DAMAGE = {
    "garbage": lambda p: _replace(p, b"\xff\xd8\xff\xe0garbage" if p.suffix == ".jpg" else b"\x89PNG\r\n\x1a\nxx"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: 300 if p.suffix == ".jpg" else 70]),
    "empty": lambda p: _replace(p, b""),
    "text": lambda p: _replace(p, b"hello\n"),
    "bomb": lambda p: _replace(p, png_claiming(100_000, 100_000)),
    "folder": lambda p: _replace(p, lambda q: q.mkdir()),
    "symlink-loop": lambda p: _replace(p, lambda q: q.symlink_to(q)),
    "missing": lambda p: _replace(p, None),
}
MASK_ONLY = {
    "rgb": lambda p: _replace(p, _png(np.zeros((18, 30, 3), np.uint8))),
    "la": lambda p: _replace(p, _png(np.zeros((18, 30, 2), np.uint8), "LA")),
    "16-bit-over-255": lambda p: _replace(p, _png(np.full((18, 30), 1000, np.uint16))),
    "wrong-size": lambda p: _replace(p, _png(np.zeros((5, 5), np.uint8), "L")),
    "value-outside-classes": lambda p: _replace(p, _png(np.full((18, 30), 77, np.uint8), "L")),
}
CASES = [(IMG, k) for k in DAMAGE] + [(MSK, k) for k in DAMAGE] + [(MSK, k) for k in MASK_ONLY]


def load_all(ds, workers: int = 2) -> None:
    loader = torch.utils.data.DataLoader(CarryUserErrors(ds), batch_size=None, num_workers=workers)
    for _ in raise_carried(loader):
        pass


def one_line_naming(e: pytest.ExceptionInfo, path) -> None:
    msg = str(e.value)
    assert e.value.path == str(path), msg
    assert msg.startswith(f"{path}: ") and "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg


@pytest.mark.parametrize("rel,kind", CASES, ids=[f"{'image' if r == IMG else 'mask'}-{k}" for r, k in CASES])
def test_a_bad_voc_file_is_one_error_from_the_loader_workers_and_from_check(voc_tree, rel, kind):
    p = voc_tree.root / rel
    (DAMAGE | MASK_ONLY)[kind](p)
    ds = build_dataset("voc", voc_tree.root, "train")
    with pytest.raises(WsssBenchError) as e:
        load_all(ds)
    one_line_naming(e, p)
    with pytest.raises(WsssBenchError) as e:
        ds[1]  # and in the main process
    one_line_naming(e, p)
    report = check_dataset("voc", voc_tree.root, ["train"], workers=2)
    assert [x.path for x in report.errors] == [str(p)], report.errors


def test_bomb_headers_are_refused_without_decoding(voc_tree):
    p = voc_tree.root / MSK
    p.write_bytes(png_claiming(60_000, 60_000))
    report = check_dataset("voc", voc_tree.root, ["train"], workers=1, decode_images=False)
    assert [(x.path, x.message.split(" (")[0]) for x in report.errors] == [(str(p), "image too large")]


def test_a_decoder_exception_of_any_type_names_the_file(voc_tree, monkeypatch):
    """Pillow raises struct.error, IndexError, EOFError and others for some malformed files."""
    import wsss_bench.data.base as base

    def broken(path):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(base, "read_rgb_image", broken)
    ds = build_dataset("voc", voc_tree.root, "train")
    with pytest.raises(WsssBenchError, match="cannot decode image \\(unpack requires") as e:
        ds[0]
    one_line_naming(e, voc_tree.root / "JPEGImages" / "2007_000001.jpg")


@pytest.mark.parametrize("which,kind", [("image", "garbage"), ("image", "truncated"), ("mask", "truncated"),
                                        ("mask", "bomb"), ("mask", "rgb")])
def test_a_bad_coco_image_or_cached_mask_is_one_error_from_the_loader_workers(coco_tree, which, kind):
    res = prepare_coco_masks(coco_tree.root, "val", workers=1)
    stem = "COCO_val2014_000000000042"
    p = coco_tree.root / "val2014" / f"{stem}.jpg" if which == "image" else res.cache / f"{stem}.png"
    (DAMAGE | MASK_ONLY)[kind](p)
    ds = build_dataset("coco", coco_tree.root, "val")
    with pytest.raises(WsssBenchError) as e:
        load_all(ds)
    one_line_naming(e, p)
    report = check_dataset("coco", coco_tree.root, ["val"], workers=2)
    assert [x.path for x in report.errors] == [str(p)], report.errors


@pytest.fixture(scope="module")
def pristine_synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "shapes", num_images=8, seed=2, size=(40, 48))


@pytest.mark.parametrize("which,kind", [("image", "garbage"), ("image", "empty"), ("mask", "truncated"),
                                        ("mask", "bomb"), ("mask", "value-outside-classes")])
def test_a_bad_synthetic_file_is_one_error_from_the_loader_workers(pristine_synth, tmp_path, which, kind):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(pristine_synth, root)
    p = root / ("JPEGImages/synth_00000.jpg" if which == "image" else "SegmentationClass/synth_00000.png")
    if kind == "value-outside-classes":
        h, w = np.asarray(Image.open(p)).shape
        _replace(p, _png(np.full((h, w), 9, np.uint8), "L"))  # 6 classes: 9 is none of them
    else:
        (DAMAGE | MASK_ONLY)[kind](p)
    ds = build_dataset("synthetic", root, "train")
    with pytest.raises(WsssBenchError) as e:
        load_all(ds)
    one_line_naming(e, p)
    report = check_dataset("synthetic", root, ["train"], workers=2)
    assert [x.path for x in report.errors] == [str(p)], report.errors
