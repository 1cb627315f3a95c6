"""Shared fixtures. Dataset fixtures build small VOC-layout and COCO-layout trees on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_bench.data.classes import VOC, voc_palette

# ----------------------------------------------------------------------------------------------
# VOC layout
# ----------------------------------------------------------------------------------------------


@dataclass
class VOCTree:
    root: Path
    splits: dict[str, list[str]]
    masks: dict[str, np.ndarray]          # SegmentationClass ground truth (train + val)
    aug_masks: dict[str, np.ndarray]      # SegmentationClassAug
    xml_names: dict[str, list[str]] = field(default_factory=dict)


def write_jpeg(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


def write_xml(path: Path, names: list[str], difficult: tuple[int, ...] = ()) -> None:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{1 if i in difficult else 0}</difficult>"
        f"<part><name>head</name></part></object>" for i, n in enumerate(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>x.jpg</filename>{objs}</annotation>")


def _voc_mask(h: int, w: int, classes: list[int], seed: int) -> np.ndarray:
    """Blocks of the given classes with a 1-px 255 border around each block."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=np.uint8)
    for c in classes:
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + int(rng.integers(3, h // 2)), x0 + int(rng.integers(3, w // 2))
        m[y0:y1, x0:x1] = 255
        m[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = c
    return m


def build_voc_tree(root: Path) -> VOCTree:
    spec = {  # id -> (h, w, classes)
        "2007_000001": (20, 24, [1, 15]),
        "2007_000002": (18, 30, [7]),
        "2007_000003": (22, 22, [12, 15, 20]),
        "2008_000004": (16, 26, [3]),
        "2008_000005": (24, 20, [9, 11]),
    }
    train, val = ["2007_000001", "2007_000002", "2007_000003"], ["2008_000004", "2008_000005"]
    test = ["2009_000006", "2009_000007"]
    aug_only = ["2010_000008", "2010_000009", "2010_000010"]
    masks, aug = {}, {}
    xml_names = {}
    for k, (iid, (h, w, cls)) in enumerate(spec.items()):
        write_jpeg(root / "JPEGImages" / f"{iid}.jpg", h, w, k)
        masks[iid] = _voc_mask(h, w, cls, k)
        write_palette_png(root / "SegmentationClass" / f"{iid}.png", masks[iid])
        aug[iid] = masks[iid]
        write_palette_png(root / "SegmentationClassAug" / f"{iid}.png", masks[iid])
        names = [VOC.names[c] for c in cls]
        xml_names[iid] = names
        write_xml(root / "Annotations" / f"{iid}.xml", names, difficult=(0,))
    for k, iid in enumerate(test):
        write_jpeg(root / "JPEGImages" / f"{iid}.jpg", 17, 19, 100 + k)
    for k, iid in enumerate(aug_only):
        write_jpeg(root / "JPEGImages" / f"{iid}.jpg", 15, 21, 200 + k)
        aug[iid] = _voc_mask(15, 21, [2 + k], 200 + k)
        write_palette_png(root / "SegmentationClassAug" / f"{iid}.png", aug[iid])
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for name, ids in (("train", train), ("val", val), ("trainval", train + val), ("test", test)):
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return VOCTree(root, {"train": train, "val": val, "trainval": train + val, "test": test,
                          "train_aug": sorted(train + aug_only)}, masks, aug, xml_names)


@pytest.fixture
def voc_tree(tmp_path: Path) -> VOCTree:
    """A small VOC 2012 tree: 3 train, 2 val, 2 test ids, SBD-style aug masks, XML annotations."""
    return build_voc_tree(tmp_path / "VOCdevkit" / "VOC2012")


# ----------------------------------------------------------------------------------------------
# COCO layout
# ----------------------------------------------------------------------------------------------


@dataclass
class COCOTree:
    root: Path
    ann_file: Path
    data: dict
    ids_with_anns: list[str]
    empty_ids: list[str]


def _rect_poly(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def coco_instances(rle_counts: dict) -> dict:
    """A hand-written instances JSON: overlapping instances of two classes (person 1, dog 18), a crowd
    region, polygon, uncompressed-RLE and compressed-RLE segmentations, raw ids with gaps (13, 90) and
    an image with no annotation."""
    images = [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 30, "width": 40},
        {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 24, "width": 28},
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 20, "width": 20},
    ]
    # uncompressed RLE (column-major runs) of a crowd block: columns 30..35, rows 2..11 of a 30x40 image
    crowd = np.zeros((30, 40), dtype=np.uint8)
    crowd[2:12, 30:36] = 1
    flat = crowd.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    anns = [
        # big person (area 600) and a smaller dog inside it (area 80): the dog must win the overlap
        {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 600.0,
         "segmentation": [_rect_poly(2, 2, 32, 22)], "bbox": [2, 2, 30, 20]},
        {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 80.0,
         "segmentation": [_rect_poly(10, 8, 20, 16)], "bbox": [10, 8, 10, 8]},
        # a second, two-part polygon dog that overlaps the person's right edge
        {"id": 3, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 70.0,
         "segmentation": [_rect_poly(28, 18, 36, 26), [4.0, 24.0, 9.0, 24.0, 6.5, 29.0]],
         "bbox": [4, 18, 32, 11]},
        # crowd of persons (uncompressed RLE) partly over the person and the second dog
        {"id": 4, "image_id": 42, "category_id": 1, "iscrowd": 1, "area": 60.0,
         "segmentation": {"size": [30, 40], "counts": counts}, "bbox": [30, 2, 6, 10]},
        # image 7: stop sign (raw id 13 -> 12) as compressed RLE, toothbrush (raw 90 -> 80) polygon
        {"id": 5, "image_id": 7, "category_id": 13, "iscrowd": 0, "area": 99.0,
         "segmentation": rle_counts, "bbox": [3, 3, 9, 11]},
        {"id": 6, "image_id": 7, "category_id": 90, "iscrowd": 0, "area": 99.0,
         "segmentation": [_rect_poly(8, 8, 20, 20)], "bbox": [8, 8, 12, 12]},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}, {"id": 18, "name": "dog"},
            {"id": 90, "name": "toothbrush"}]
    return {"images": images, "annotations": anns, "categories": cats}


def build_coco_tree(root: Path) -> COCOTree:
    from pycocotools import mask as mask_utils

    block = np.zeros((24, 28), dtype=np.uint8, order="F")
    block[3:14, 3:12] = 1
    rle = mask_utils.encode(np.asfortranarray(block))
    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    data = coco_instances(rle)
    for k, img in enumerate(data["images"]):
        write_jpeg(root / "val2014" / img["file_name"], img["height"], img["width"], 300 + k)
    ann_file = root / "annotations" / "instances_val2014.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return COCOTree(root, ann_file, data, ["COCO_val2014_000000000007", "COCO_val2014_000000000042"],
                    ["COCO_val2014_000000000009"])


@pytest.fixture
def coco_tree(tmp_path: Path) -> COCOTree:
    """A small COCO 2014 tree (val only) with a hand-written instances JSON."""
    return build_coco_tree(tmp_path / "coco")


# ----------------------------------------------------------------------------------------------
# Synthetic set
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image synthetic shapes set (seed 0), generated once per test session."""
    from wsss_bench.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "shapes", num_images=40, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run far faster single-threaded on the shared CPUs; the count is restored afterwards.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
