"""``datasets check``: find every layout mistake of a dataset before a long run starts.

For each split: the list entries are plain ids inside the root; every id has its image and (where the
split has ground truth) its mask; masks are single-channel palette/greyscale PNGs whose values are
class indices of the class set or 255; image and mask sizes agree; the split size matches the
protocol (a mismatch is a warning, so subsets work). Each problem names the file it concerns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wsss_bench.data import DATASET_OPTIONS, DATASETS
from wsss_bench.data.base import SegDataset, decode_failure, read_image_size
from wsss_bench.data.layout import check_options
from wsss_bench.data.parallel import run_in_processes
from wsss_bench.errors import WsssBenchError

MASK_MODES = ("P", "L", "I", "I;16")


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    path: str
    message: str


@dataclass
class CheckReport:
    dataset: str
    root: str
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    images_checked: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "root": self.root, "splits": self.splits,
                "images_checked": self.images_checked, "ok": self.ok,
                "problems": [asdict(p) for p in self.problems]}


def _err(e: WsssBenchError, fallback: Path | str | None = None) -> Problem:
    return Problem("error", e.path or (str(fallback) if fallback is not None else ""), e.message)


def check_image_pair(ds: SegDataset, image_id: str, decode_images: bool = True) -> list[Problem]:
    """Problems of one id of ``ds``: image, mask, sizes, mask values, XML labels."""
    out: list[Problem] = []
    try:
        ipath = ds.image_path(image_id)
    except WsssBenchError as e:
        return [_err(e)]
    isize = None
    if not ipath.is_file():
        what = "is a folder, not an image" if ipath.is_dir() else "not found"
        out.append(Problem("error", str(ipath), f"image of id {image_id!r} {what}"))
    else:
        try:
            h, w = read_image_size(ipath, decode=decode_images)
            isize = (w, h)
        except WsssBenchError as e:
            out.append(_err(e, ipath))
    try:
        mpath = ds.mask_path(image_id)
    except WsssBenchError as e:
        return out + [_err(e)]
    if mpath is not None:
        if not mpath.is_file():
            what = "is a folder, not a mask" if mpath.is_dir() else "not found"
            out.append(Problem("error", str(mpath), f"mask of id {image_id!r} {what}"))
        else:
            out += _check_mask(ds, image_id, mpath, isize)
    if getattr(ds, "label_source", "mask") == "xml":
        from wsss_bench.data.voc import read_xml_labels

        try:
            read_xml_labels(ds.xml_path(image_id), ds.classes)  # type: ignore[attr-defined]
        except WsssBenchError as e:
            out.append(_err(e))
    return out


def _check_mask(ds: SegDataset, image_id: str, mpath: Path, isize: tuple[int, int] | None) -> list[Problem]:
    from PIL import Image

    try:
        with Image.open(mpath) as im:
            mode, msize = im.mode, im.size
            if mode not in MASK_MODES:
                return [Problem("error", str(mpath),
                                f"mask must be single-channel palette or greyscale, got mode {mode}")]
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types (and a bomb error) for a bad file
        return [Problem("error", str(mpath), decode_failure(e).replace("cannot decode image", "cannot decode mask"))]
    out: list[Problem] = []
    if isize is not None and msize != isize:
        out.append(Problem("error", str(mpath), f"mask size {msize[0]}x{msize[1]} differs from image size "
                                                f"{isize[0]}x{isize[1]}"))
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        return out + [Problem("error", str(mpath), f"mask values must be in 0..255, found {int(arr.max())}")]
    arr = arr.astype(np.uint8)
    if getattr(ds, "mask_ids", "contiguous") == "coco":
        from wsss_bench.data.coco import remap_raw_ids

        try:
            arr = remap_raw_ids(arr, mpath)
        except WsssBenchError as e:
            return out + [_err(e)]
    n = ds.classes.num_classes
    values = np.unique(arr)
    bad = [int(v) for v in values if n <= v < 255]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        out.append(Problem("error", str(mpath), f"mask values {shown} outside the {ds.classes.name} class set "
                                                f"(0..{n - 1} and 255)"))
    return out


_WORKER_DS: SegDataset | None = None


def _init_worker(ds: SegDataset, decode: bool) -> None:
    global _WORKER_DS, _WORKER_DECODE
    _WORKER_DS = ds
    _WORKER_DECODE = decode


_WORKER_DECODE = True


def _check_worker(image_id: str) -> list[Problem]:
    assert _WORKER_DS is not None
    return check_image_pair(_WORKER_DS, image_id, _WORKER_DECODE)


def default_splits(name: str, root: Path, options: dict) -> list[str]:
    """The splits present under ``root`` (what ``check`` looks at when no split is given)."""
    if name == "synthetic":
        return ["train", "val"]
    if name == "coco":
        found = [s for s in ("train", "val") if (root / f"{s}2014").is_dir()]
        return found or ["val"]
    from wsss_bench.data.voc import resolve_voc_root

    try:
        vroot = resolve_voc_root(root)
    except WsssBenchError:
        return ["train"]
    lists = vroot / "ImageSets" / "Segmentation"
    found = [s for s in ("train", "val", "test") if (lists / f"{s}.txt").is_file()]
    if (vroot / "SegmentationClassAug").is_dir():
        found.append("train_aug")
    return found or ["train"]


def _open(name: str, root: Path, split: str, options: dict, problems: list[Problem]) -> SegDataset:
    def on_bad(path: Path, message: str, severity: str) -> None:
        problems.append(Problem(severity, str(path), message))

    if name == "voc":
        from wsss_bench.data.voc import VOCSegmentation

        return VOCSegmentation(root, split, _on_bad=on_bad, **options)
    if name == "synthetic":
        from wsss_bench.data.synthetic import SyntheticShapes

        return SyntheticShapes(root, split, _on_bad=on_bad, **options)
    from wsss_bench.data.coco import COCOSegmentation

    return COCOSegmentation(root, split, **options)


def check_coco_annotations(root: Path, split: str) -> list[Problem]:
    """Every structural problem of ``annotations/instances_<split>2014.json`` (when the file exists;
    a missing one is reported by the dataset itself), each naming the image and the annotation."""
    from wsss_bench.data.coco import COCO_SPLITS, annotation_path, read_instances_json, validate_instances

    if split not in COCO_SPLITS:
        return []
    path = annotation_path(root, split)
    if not path.is_file():
        return []
    found: list[Problem] = []

    def note(message: str) -> None:
        found.append(Problem("error", str(path), message))

    try:
        validate_instances(read_instances_json(path), path, on_problem=note)
    except WsssBenchError as e:
        found.append(_err(e, path))
    return found


def check_dataset(name: str, root: str | os.PathLike, splits: list[str] | None = None, workers: int = 1,
                  decode_images: bool = True, progress: Callable[[str, int, int], None] | None = None,
                  **options) -> CheckReport:
    """Check every id of each split; returns a report (never raises for a layout problem)."""
    key = str(name).lower()
    if key not in DATASETS:
        raise WsssBenchError(f"unknown dataset {name!r} (expected {', '.join(DATASETS)})")
    if type(workers) is not int or workers < 1:
        raise WsssBenchError(f"workers must be a whole number >= 1, got {workers!r}")
    opts = {k: v for k, v in options.items() if v is not None}
    check_options(key, opts, DATASET_OPTIONS[key])
    root = Path(root)
    report = CheckReport(key, str(root))
    if not root.is_dir():
        what = "is a file, not a data root folder" if root.exists() else "data root folder not found"
        report.problems.append(Problem("error", str(root), what))
        return report
    seen: set[tuple[str, str]] = set()
    for split in splits or default_splits(key, root, opts):
        if key == "coco" and "masks" not in opts:
            report.problems += check_coco_annotations(root, split)
        try:
            ds = _open(key, root, split, opts, report.problems)
        except WsssBenchError as e:
            report.problems.append(_err(e, root))
            continue
        report.splits[split] = len(ds.ids)
        for w in getattr(ds, "warnings", []):
            report.problems.append(Problem("warning", str(ds.root), w))
        todo = []
        for i in ds.ids:
            try:
                k = (str(ds.image_path(i)), str(ds.mask_path(i)))
            except WsssBenchError as e:
                report.problems.append(_err(e))
                continue
            if k not in seen:
                seen.add(k)
                todo.append(i)
        n_workers = max(1, min(workers, len(todo)))
        done = 0

        def collect(probs: list[Problem], split: str = split, total: int = len(todo)) -> None:
            nonlocal done
            done += 1
            report.problems.extend(probs)
            if progress:
                progress(split, done, total)

        if n_workers == 1:
            for i in todo:
                collect(check_image_pair(ds, i, decode_images))
        else:
            run_in_processes(_check_worker, todo, n_workers, collect, ordered=True,
                             initializer=_init_worker, initargs=(ds, decode_images))
        report.images_checked += len(todo)
    return report
