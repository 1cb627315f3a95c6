"""MS COCO 2014: semantic masks from the instance annotations, a validated PNG cache, and the dataset.

Layout (``root``)::

    train2014/COCO_train2014_<12 digits>.jpg
    val2014/COCO_val2014_<12 digits>.jpg
    annotations/instances_{train,val}2014.json

Semantic masks follow docs/protocol.md ("COCO semantic masks"): each non-crowd instance is rasterised
with pycocotools exactly as ``COCO.annToMask`` does (polygons merged with ``frPyObjects`` +
``merge``, uncompressed RLE through ``frPyObjects``, compressed RLE decoded as is) and painted with
its contiguous class index (category ids ascending -> 1..80); where instances overlap the smaller
one wins, as in the coco2voc converter (``coco2voc_aux.py``: annotations sorted by their ``area``
field). Crowd regions become 255 (``crowd="ignore"``, default) or stay background
(``crowd="background"``, ReCAM's rule) wherever no non-crowd instance covers them.

``wsss-bench datasets prepare coco`` builds the masks once with worker processes into a cache
folder per split (``<cache>/<split>2014/<id>.png``) with a ``manifest.json`` recording the builder
version, its options, the annotation file's SHA-256 and the split's ids; a dataset built from a
cache checks that manifest and names it when it is stale, foreign or incomplete.

The instances JSON is validated as a whole before any mask is built (:func:`validate_instances`),
so pycocotools never sees a value it would crash on, read out of bounds with or silently
reinterpret (``frPyObjects`` takes a 4-number polygon for a box and raises a bare ``Exception`` on a
shorter one; NaN or far-away coordinates and RLE counts that do not sum to ``height * width`` reach
unchecked C loops). Refused, each as one error naming the JSON file, the image and the annotation:

* ``images`` / ``annotations`` that are not lists of objects; an image ``id`` that is not an integer
  or is repeated; a ``file_name`` that is not a string, whose stem is not a plain id, or whose stem
  another image has; ``height``/``width`` that are not positive integers, or an image larger than
  :data:`MAX_IMAGE_PIXELS`;
* an annotation ``id`` that is not an integer or is repeated; an ``image_id`` that is missing, not
  an integer, or not the id of an image of ``images`` (an error rather than a warning: a subset JSON
  must drop the annotations of the images it drops); a ``category_id`` that is not one of the 80
  COCO ids; ``iscrowd`` other than 0/1; ``area`` that is not a finite number >= 0;
* a polygon that is not an even number (at least 6) of finite numbers lying within one image side
  of the image, or whose outline is longer than :data:`MAX_OUTLINE_PIXELS`; a segmentation list
  holding anything but polygons; an RLE whose ``size`` is not ``[height, width]`` or whose counts
  (integers, or the compressed string) are negative or do not sum to ``height * width``.

Accepted as pycocotools accepts them: a missing, ``null`` or empty ``segmentation`` (no pixels), a
missing ``area`` (the pixel count is used), a missing ``iscrowd`` (0), keys the builder does not read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsss_bench.data.base import SegDataset, fingerprint_of, labels_from_mask, read_checked, safe_join
from wsss_bench.data.classes import COCO, COCO_CATEGORY_IDS, IGNORE_INDEX, coco_category_to_index
from wsss_bench.data.layout import PROTOCOL_SPLIT_SIZES, id_problem, require_dir
from wsss_bench.data.parallel import run_in_processes
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_path, atomic_write_json, read_index_png, sha256_file

#: Bump when the mask-building rules change: every cache built by an older builder becomes stale.
BUILDER_NAME = "wsss-bench coco-semantic"
BUILDER_VERSION = 1
COCO_SPLITS = ("train", "val")
CROWD_RULES = ("ignore", "background")
MASK_ID_KINDS = ("contiguous", "coco")
MANIFEST = "manifest.json"
_CAT_TO_INDEX = coco_category_to_index()
DEFAULT_CACHE = "wsss-bench-masks"

#: Largest image (height x width) whose semantic mask is built: 50 megapixels, about 120 times the
#: largest COCO 2014 image (640 x 640). Building one holds the uint8 mask, one decoded instance and
#: the crowd union (about 150 MB at the cap); a 200000 x 200000 entry would ask for 37 GiB per layer.
MAX_IMAGE_PIXELS = 50_000_000
#: Longest outline (in pixels, over the edges of one polygon part) handed to pycocotools, which traces
#: it at 5x resolution with about 100 bytes of buffers per outline pixel (100 MB at the cap). COCO
#: outlines are at most a few thousand pixels; a zigzag of 10,000 vertices across a 640-pixel image
#: is 6.4 million.
MAX_OUTLINE_PIXELS = 1_000_000
#: When validation collects problems (``datasets check``), the first this many are kept; all are counted.
MAX_PROBLEMS_KEPT = 1000


# ----------------------------------------------------------------------------------------------
# Validation of the instances JSON (pure functions on the parsed JSON)
# ----------------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return type(v) is int  # JSON integers; bool (a subclass of int) is not one


def _is_num(v: object) -> bool:
    return type(v) is int or type(v) is float


def _short(v: object, n: int = 40) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _name(s: str) -> str:
    """A file name for a one-line message: as is when printable and short, else its repr, shortened."""
    return s if s.isprintable() and len(s) <= 80 else _short(s, 80)


def image_size_problem(h: object, w: object) -> str | None:
    """Why ``(h, w)`` is not an image size masks can be built for, or ``None``."""
    for name, v in (("height", h), ("width", w)):
        if not _is_int(v) or v < 1:  # type: ignore[operator]
            return f"{name} {_short(v)} is not a positive integer"
    if h * w > MAX_IMAGE_PIXELS:  # type: ignore[operator]
        return (f"image size {_short(w, 20)}x{_short(h, 20)} is over the cap of {MAX_IMAGE_PIXELS:,} pixels "
                f"(wsss_bench.data.coco.MAX_IMAGE_PIXELS; COCO images are at most 640x640)")
    return None


def _polygon_problem(poly: object, h: int, w: int) -> str | None:
    if type(poly) is not list:
        return f"holds {_short(poly)}, not a polygon (a list of x, y numbers)"
    n = len(poly)
    if n < 6 or n % 2:
        return (f"has {n} numbers; a polygon needs an even count of at least 6 (3 points)"
                + (" (pycocotools would read these 4 as a box)" if n == 4 else ""))
    # one pass per axis; NaN fails every comparison, so it is caught by the range test
    for axis, vals, side in (("x", poly[0::2], w), ("y", poly[1::2], h)):
        lo, hi = -side, 2 * side
        for v in vals:
            if not (type(v) is float or type(v) is int) or not lo <= v <= hi:
                if not _is_num(v):
                    return f"coordinate {_short(v)} is not a number"
                if v != v or v in (float("inf"), float("-inf")):
                    return f"coordinate {v} is not finite"
                return (f"{axis} coordinate {_short(v)} is more than one image side outside the image "
                        f"({w}x{h}; allowed {lo}..{hi})")
    # the outline is at most (vertices x widest allowed step); measure it only when that may exceed the cap
    if (n // 2) * 3 * max(h, w) > MAX_OUTLINE_PIXELS:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        step = np.abs(xy - np.roll(xy, -1, axis=0)).max(axis=1).sum()
        if step > MAX_OUTLINE_PIXELS:
            return (f"outline is {step:,.0f} pixels long, over the cap of {MAX_OUTLINE_PIXELS:,} "
                    "(wsss_bench.data.coco.MAX_OUTLINE_PIXELS)")
    return None


def rle_string_counts(s: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, or ``None`` when it is malformed.

    The format of pycocotools' ``rleToString``: each count (from the fourth on, as a difference from
    the count two places back) in 5-bit groups, least significant first, each group a character
    ``48 + bits`` with bit 0x20 set while more groups follow and bit 0x10 of the last group the sign.
    ``rleFrString`` does not check its input: a string ending inside a count is read past its end,
    and a count of more than 6 groups shifts past the width of an ``int``. Both are refused here.
    """
    counts: list[int] = []
    x = k = 0
    for ch in s:
        c = ord(ch) - 48
        if not 0 <= c < 64 or k >= 6:
            return None
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue
        if c & 0x10:
            x -= 1 << (5 * k)  # sign-extend the last group
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
        x = k = 0
    if k:
        return None  # the string ends inside a count
    return counts


def _rle_problem(segm: dict, h: int, w: int) -> str | None:
    size, counts = segm.get("size"), segm.get("counts")
    if size is None or counts is None:
        return "RLE segmentation needs 'size' and 'counts'"
    if type(size) is not list or len(size) != 2 or not all(_is_int(v) for v in size):
        return f"RLE size {_short(size)} is not [height, width]"
    if size != [h, w]:
        return f"RLE size {size} differs from image size {[h, w]}"
    if type(counts) is list:
        if not all(_is_int(c) for c in counts):
            bad = next(c for c in counts if not _is_int(c))
            return f"RLE count {_short(bad)} is not an integer"
        runs = counts
    elif type(counts) is str:
        runs = rle_string_counts(counts)
        if runs is None:
            return "compressed RLE counts are not a valid pycocotools string"
    else:
        return f"RLE counts {_short(counts)} are neither a list of integers nor a compressed string"
    if runs and min(runs) < 0:
        return f"RLE count {_short(min(runs))} is negative"
    total = sum(runs)
    if total != h * w:
        return f"RLE counts sum to {_short(total)}, not height x width = {h * w}"
    return None


def segmentation_problem(segm: object, h: int, w: int) -> str | None:
    """Why ``segm`` cannot be rasterised exactly as ``COCO.annToMask`` would (``None`` if it can)."""
    if segm is None:
        return None
    if type(segm) is list:
        for k, poly in enumerate(segm):
            why = _polygon_problem(poly, h, w)
            if why is not None:
                return f"polygon {k} {why}"
        return None
    if type(segm) is dict:
        return _rle_problem(segm, h, w)
    return f"segmentation {_short(segm)} is neither a list of polygons nor an RLE object"


def annotation_problem(ann: dict, h: int, w: int, cat_to_index: dict[int, int] | None = None) -> str | None:
    """Why annotation ``ann`` of an ``h`` x ``w`` image is not usable (``None`` when it is).

    Checks the fields the builder reads: ``id``, ``category_id``, ``iscrowd``, ``area`` and
    ``segmentation`` (``image_id`` is checked by :func:`validate_instances`, which knows the images).
    """
    cmap = _CAT_TO_INDEX if cat_to_index is None else cat_to_index
    if not _is_int(ann.get("id")):
        return f"id {_short(ann.get('id'))} is not an integer"
    cid = ann.get("category_id")
    if not _is_int(cid) or cid not in cmap:
        return f"category id {_short(cid)} is not a COCO category"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or not (_is_int(crowd) or type(crowd) is bool):
        return f"iscrowd {_short(crowd)} is not 0 or 1"
    area = ann.get("area")
    if area is not None and (not _is_num(area) or not 0 <= area <= 1e300):  # NaN fails too; 1e300: a float
        return f"area {_short(area)} is not a finite number >= 0"
    return segmentation_problem(ann.get("segmentation"), h, w)


@dataclass
class Instances:
    """A validated instances JSON: images sorted by id stem, annotations grouped by image id."""

    images: list[dict]               # {"id", "stem", "height", "width", "file_name"}
    by_image: dict[int, list[dict]]
    num_annotations: int


def validate_instances(data: object, path: Path | str,
                       on_problem: Callable[[str], None] | None = None) -> Instances:
    """Check the structure of a parsed instances JSON once, before any mask is built.

    Every problem names the image (id and file name) and the annotation (id and position in
    ``annotations``). Without ``on_problem`` the first one raises :class:`WsssBenchError` with
    ``path`` (saying how many more there are); with it, every problem is passed there and the
    images and annotations that passed are returned.
    """
    problems: list[str] = []

    def report(msg: str) -> None:
        if on_problem is not None:
            on_problem(msg)
        elif len(problems) < MAX_PROBLEMS_KEPT:
            problems.append(msg)
        else:
            problems.append("")  # counted, not kept

    if type(data) is not dict:
        raise WsssBenchError(f"not a COCO instances file (the top level is a {type(data).__name__}, "
                             "not an object with 'images' and 'annotations')", path)
    for key in ("images", "annotations"):
        if key not in data:
            raise WsssBenchError("not a COCO instances file (needs 'images' and 'annotations')", path)
        if type(data[key]) is not list:
            raise WsssBenchError(f"'{key}' is {_short(data[key])}, not a list", path)
    images: list[dict] = []
    by_id: dict[int, dict] = {}
    by_stem: dict[str, int] = {}
    rejected: set[int] = set()  # ids of image entries already reported: their annotations are not
    for k, img in enumerate(data["images"]):
        where = f"images[{k}]"
        if type(img) is not dict:
            report(f"{where} is {_short(img)}, not an object")
            continue
        iid, fname = img.get("id"), img.get("file_name")
        if not _is_int(iid):
            report(f"{where}: id {_short(iid)} is not an integer")
            continue
        where = f"image {iid} ({where})"
        if type(fname) is not str:
            report(f"{where}: file_name {_short(fname)} is not a string")
            rejected.add(iid)
            continue
        where = f"image {iid} ({_name(fname)})"
        stem = Path(fname).stem if fname else ""
        why = id_problem(stem) or image_size_problem(img.get("height"), img.get("width"))
        if why is None and iid in by_id:
            why = f"id {iid} is also the id of image {_name(by_id[iid]['file_name'])}"
        if why is None and stem in by_stem:
            why = f"file name stem {stem!r} is also the stem of image {by_stem[stem]}"
        if why is not None:
            report(f"{where}: {why}")
            rejected.add(iid)
            continue
        info = {"id": iid, "stem": stem, "height": img["height"], "width": img["width"], "file_name": fname}
        by_id[iid] = info
        by_stem[stem] = iid
        images.append(info)
    if not data["images"]:
        report("'images' is empty")
    by_image: dict[int, list[dict]] = {}
    seen_ann: dict[int, int] = {}
    num = 0
    for k, ann in enumerate(data["annotations"]):
        if type(ann) is not dict:
            report(f"annotations[{k}] is {_short(ann)}, not an object")
            continue
        aid = ann.get("id")
        where = f"annotation {aid} (annotations[{k}])" if _is_int(aid) else f"annotations[{k}]"
        img_id = ann.get("image_id")
        if "image_id" not in ann:
            report(f"{where}: no image_id")
            continue
        if not _is_int(img_id):
            report(f"{where}: image_id {_short(img_id)} is not an integer")
            continue
        info = by_id.get(img_id)
        if info is None:
            if img_id not in rejected:
                report(f"{where}: image_id {img_id} is not the id of an image in 'images' (a subset JSON "
                       "must drop the annotations of the images it drops)")
            continue
        why = annotation_problem(ann, info["height"], info["width"])
        if why is None and aid in seen_ann:
            why = f"id {aid} is also the id of annotations[{seen_ann[aid]}]"
        if why is not None:
            report(f"{where} of image {img_id} ({_name(info['file_name'])}): {why}")
            continue
        seen_ann[aid] = k
        by_image.setdefault(img_id, []).append(ann)
        num += 1
    if problems:
        more = len(problems) - 1
        tail = (f" (and {more} more problem{'s' if more > 1 else ''}; `wsss-bench datasets check --dataset coco` "
                "lists them)") if more else ""
        raise WsssBenchError(problems[0] + tail, path)
    images.sort(key=lambda i: i["stem"])
    return Instances(images, by_image, num)


def read_instances_json(path: Path) -> object:
    """The parsed JSON of an instances file (a UTF-8 BOM is accepted); a read error names the file."""
    if not path.is_file():
        raise WsssBenchError("COCO instances annotation file " + ("is a folder" if path.is_dir() else "not found"),
                             path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, MemoryError) as e:
        msg = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise WsssBenchError(f"cannot read COCO annotation JSON ({msg})", path) from None


def load_instances(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Images (sorted by id stem) and annotations grouped by image id, from a validated instances JSON."""
    inst = validate_instances(read_instances_json(path), path)
    return inst.images, inst.by_image


# ----------------------------------------------------------------------------------------------
# Mask building (pure functions)
# ----------------------------------------------------------------------------------------------


def ann_to_rle(segm, height: int, width: int) -> dict:
    """The RLE of one annotation's ``segmentation``, with the same calls as ``COCO.annToRLE``."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _check_size(height: object, width: object) -> None:
    why = image_size_problem(height, width)
    if why is not None:
        raise WsssBenchError(why)


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary uint8 mask of one annotation (``COCO.annToMask`` without a ``COCO`` object).

    The segmentation is validated first (:func:`segmentation_problem`); a bad one is a
    :class:`WsssBenchError` naming the annotation.
    """
    from pycocotools import mask as mask_utils

    _check_size(height, width)
    segm = ann.get("segmentation")
    why = segmentation_problem(segm, height, width)
    if why is not None:
        raise WsssBenchError(f"annotation {ann.get('id')}: {why}")
    if not segm:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_utils.decode(ann_to_rle(segm, height, width))


def semantic_mask(anns: Iterable[dict], height: int, width: int, crowd: str = "ignore",
                  cat_to_index: dict[int, int] | None = None) -> np.ndarray:
    """Semantic class-index mask (uint8 HxW) of one image's instance annotations.

    Non-crowd instances are painted from the largest to the smallest, so the smaller instance wins
    an overlap (size = the annotation's ``area`` field as coco2voc uses it, the pixel count when the
    field is missing; equal sizes: the lower annotation id wins). Crowd regions then become
    ``IGNORE_INDEX`` (``crowd="ignore"``) or stay background (``crowd="background"``) on the pixels
    no instance covers. Raw category ids never reach the mask: each maps to 1..80. Every annotation
    is validated first (:func:`annotation_problem`); a bad one is a :class:`WsssBenchError` naming it.
    """
    if crowd not in CROWD_RULES:
        raise WsssBenchError(f"crowd must be one of {', '.join(CROWD_RULES)}, got {crowd!r}")
    _check_size(height, width)
    cmap = _CAT_TO_INDEX if cat_to_index is None else cat_to_index
    anns = list(anns)
    for ann in anns:
        why = (f"{_short(ann)} is not an object" if type(ann) is not dict
               else annotation_problem(ann, height, width, cmap))
        if why is not None:
            raise WsssBenchError(f"annotation {ann.get('id') if type(ann) is dict else '?'}: {why}")
    return _paint(anns, height, width, crowd, cmap)


def _paint(anns: list[dict], height: int, width: int, crowd: str, cmap: dict[int, int]) -> np.ndarray:
    """:func:`semantic_mask` on annotations already validated. Instances are decoded one at a time,
    in painting order, so memory stays at the mask plus one instance whatever their number."""
    from pycocotools import mask as mask_utils

    # pycocotools decodes column-major; painting into a column-major canvas avoids strided copies
    out = np.zeros((height, width), dtype=np.uint8, order="F")
    painted: list[tuple[float, int, int, dict]] = []
    crowd_rles: list[dict] = []
    for ann in anns:
        segm = ann.get("segmentation")
        if not segm:
            continue  # no pixels: it can neither paint nor cover anything
        rle = ann_to_rle(segm, height, width)
        if ann.get("iscrowd", 0):
            crowd_rles.append(rle)
            continue
        area = ann.get("area")
        size = float(area) if area is not None else float(mask_utils.area(rle))
        painted.append((size, ann["id"], cmap[ann["category_id"]], rle))
    painted.sort(key=lambda t: (-t[0], -t[1]))
    for _, _, index, rle in painted:
        np.copyto(out, index, where=mask_utils.decode(rle).view(bool))
    if crowd == "ignore" and crowd_rles:
        union = crowd_rles[0] if len(crowd_rles) == 1 else mask_utils.merge(crowd_rles, intersect=False)
        covered = mask_utils.decode(union).view(bool)
        np.copyto(out, IGNORE_INDEX, where=covered & (out == 0))
    return np.ascontiguousarray(out)


def raw_id_lut() -> np.ndarray:
    """Lookup table raw COCO category id -> contiguous index (0 and 255 kept); -1 marks a bad value."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = 0
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for i, cid in enumerate(COCO_CATEGORY_IDS):
        lut[cid] = i + 1
    return lut


def remap_raw_ids(mask: np.ndarray, path: Path | str | None = None) -> np.ndarray:
    """Convert a mask in raw COCO category ids (1..90 with gaps) to contiguous indices 1..80.

    A value that is neither a category id nor 0/255 is an error naming the file.
    """
    out = raw_id_lut()[mask]
    if (out < 0).any():
        bad = sorted(set(np.unique(mask[out < 0]).tolist()))
        raise WsssBenchError(f"mask value {bad[0]} is not a raw COCO category id (nor 0 or 255)", path)
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Annotation file and cache
# ----------------------------------------------------------------------------------------------


def resolve_coco_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    require_dir(root, "data root")
    return root


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2014.json"


@dataclass
class CacheManifest:
    """What ``manifest.json`` of a mask cache records."""

    builder: str
    builder_version: int
    options: dict
    split: str
    annotation_file: str
    annotation_sha256: str
    ids: list[str]
    empty_ids: list[str]
    num_instances: int
    complete: bool
    seconds: float = 0.0
    pycocotools: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "builder": (str,), "builder_version": (int,), "options": (dict,), "split": (str,),
    "annotation_file": (str,), "annotation_sha256": (str,), "ids": (list,), "empty_ids": (list,),
    "num_instances": (int,), "complete": (bool,), "seconds": (int, float), "pycocotools": (str,),
}


def read_manifest(path: Path) -> CacheManifest:
    """Read and type-check a cache's ``manifest.json``; anything else is an error naming it."""
    if not path.is_file():
        raise WsssBenchError("mask cache manifest not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WsssBenchError(f"not a wsss-bench mask cache manifest ({type(e).__name__})", path) from None
    if type(data) is not dict:
        raise WsssBenchError("not a wsss-bench mask cache manifest (not a JSON object)", path)
    for key, types in _MANIFEST_TYPES.items():
        if key not in data and key in ("seconds", "pycocotools"):
            continue
        v = data.get(key)
        if key not in data or type(v) not in types:
            raise WsssBenchError(f"not a wsss-bench mask cache manifest ({key!r} is {_short(v)})", path)
    for key in ("ids", "empty_ids"):
        for i in data[key]:
            why = f"{_short(i)} is not a string" if type(i) is not str else id_problem(i)
            if why is not None:
                raise WsssBenchError(f"mask cache manifest lists a bad image id in {key!r}: {why}", path)
    unknown = sorted(set(data) - set(_MANIFEST_TYPES))
    if unknown:
        raise WsssBenchError(f"not a wsss-bench mask cache manifest (unknown key {unknown[0]!r})", path)
    return CacheManifest(**data)


def cache_dir(root: Path, split: str, cache: str | os.PathLike | None) -> Path:
    base = Path(cache) if cache is not None else root / DEFAULT_CACHE
    return base / f"{split}2014"


def manifest_mismatch(man: CacheManifest, crowd: str, ann_sha: str | None) -> str | None:
    """Why a cache does not match the requested build, or ``None`` when it does."""
    if man.builder != BUILDER_NAME:
        return f"foreign cache (builder {man.builder!r}, expected {BUILDER_NAME!r})"
    if man.builder_version != BUILDER_VERSION:
        return (f"stale cache: built by builder version {man.builder_version}, this is version "
                f"{BUILDER_VERSION}; rerun `wsss-bench datasets prepare coco`")
    if man.options.get("crowd") != crowd:
        return (f"stale cache: built with crowd={man.options.get('crowd')}, requested crowd={crowd}; "
                "rerun `wsss-bench datasets prepare coco` with that option or pass another --cache")
    if ann_sha is not None and man.annotation_sha256 != ann_sha:
        return (f"stale cache: built from {man.annotation_file} with SHA-256 {man.annotation_sha256[:12]}..., "
                f"the annotation file now has {ann_sha[:12]}...; rerun `wsss-bench datasets prepare coco`")
    return None


_PALETTE_BYTES = COCO.palette.astype(np.uint8).tobytes()


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a class-index mask as a palette PNG, atomically; zlib level 1 (4x faster than the
    default level 6 for about 25% larger files, which matters for 123k masks)."""
    from PIL import Image

    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    im.putpalette(_PALETTE_BYTES)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", compress_level=1)


def _build_one(task: tuple[dict, list[dict], str, str, bool]) -> tuple[str, int]:
    """Worker: build and write one image's mask (annotations validated by :func:`validate_instances`);
    returns (id, instance count). A write error names the mask file."""
    info, anns, out_dir, crowd, skip_existing = task
    out = Path(out_dir) / f"{info['stem']}.png"
    if not (skip_existing and out.is_file()):
        mask = _paint(anns, info["height"], info["width"], crowd, _CAT_TO_INDEX)
        try:
            write_mask_png(out, mask)
        except OSError as e:
            raise WsssBenchError(f"cannot write the mask ({e.strerror or e})", out) from None
    return info["stem"], len(anns)


def _check_cache_location(out_dir: Path) -> None:
    """Fail before any work when the cache folder cannot be created or written (a file on its path,
    a read-only folder)."""
    p = out_dir
    while not p.exists() and p.parent != p:
        p = p.parent
    if not p.is_dir():
        raise WsssBenchError(f"is not a folder, so the mask cache {out_dir} cannot be created there", p)
    if not os.access(p, os.W_OK | os.X_OK):
        raise WsssBenchError(f"folder is not writable, so the mask cache {out_dir} cannot be written", p)


def _write_manifest(path: Path, man: CacheManifest) -> None:
    try:
        atomic_write_json(path, man.to_json())
    except OSError as e:
        raise WsssBenchError(f"cannot write the cache manifest ({e.strerror or e})", path) from None


@dataclass
class PrepareResult:
    cache: Path
    manifest: Path
    num_images: int
    num_empty: int
    num_instances: int
    seconds: float
    status: str  # "built", "resumed", "rebuilt (<why>)" or "up to date"
    notes: list[str] = field(default_factory=list)


def prepare_coco_masks(root: str | os.PathLike, split: str, cache: str | os.PathLike | None = None,
                       crowd: str = "ignore", workers: int | None = None, force: bool = False,
                       annotations: str | os.PathLike | None = None,
                       progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Build the semantic masks of one COCO split into the cache (worker processes).

    An up-to-date cache is left alone (unless ``force``); an incomplete cache with the same
    parameters is resumed; a stale cache is rebuilt; a non-empty folder without our manifest is
    refused (it is someone else's). ``progress(done, total)`` is called as images finish.
    """
    if split not in COCO_SPLITS:
        raise WsssBenchError(f"unknown coco split {split!r} (expected {', '.join(COCO_SPLITS)})")
    if crowd not in CROWD_RULES:
        raise WsssBenchError(f"crowd must be one of {', '.join(CROWD_RULES)}, got {crowd!r}")
    if workers is not None and (type(workers) is not int or workers < 1):
        raise WsssBenchError(f"workers must be a whole number >= 1 (leave it out for all CPU cores), got {workers!r}")
    root = resolve_coco_root(root)
    ann_path = Path(annotations) if annotations is not None else annotation_path(root, split)
    out_dir = cache_dir(root, split, cache)
    man_path = out_dir / MANIFEST
    if not ann_path.is_file():
        raise WsssBenchError("COCO instances annotation file " + ("is a folder" if ann_path.is_dir() else "not found"),
                             ann_path)
    ann_sha = sha256_file(ann_path)
    status, skip_existing = "built", False
    if man_path.is_file():
        man = read_manifest(man_path)
        why = manifest_mismatch(man, crowd, ann_sha)
        if why is None and man.complete and not force:
            return PrepareResult(out_dir, man_path, len(man.ids) + len(man.empty_ids), len(man.empty_ids),
                                 man.num_instances, 0.0, "up to date")
        if why is None and not man.complete and not force:
            status, skip_existing = "resumed", True
        elif why is not None:
            if man.builder != BUILDER_NAME:
                raise WsssBenchError(f"{why}; refusing to overwrite it", man_path)
            status = f"rebuilt ({why.split(';')[0]})"
        else:
            status = "rebuilt (--force)"
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise WsssBenchError("folder is not empty and has no wsss-bench manifest.json; refusing to write "
                             "masks into it (pass another --cache)", out_dir)
    _check_cache_location(out_dir)
    t0 = time.perf_counter()
    images, by_image = load_instances(ann_path)  # the whole JSON is validated before anything is written
    ids = [i["stem"] for i in images if by_image.get(i["id"])]
    empty = [i["stem"] for i in images if not by_image.get(i["id"])]
    num_instances = sum(len(v) for v in by_image.values())
    try:
        from importlib.metadata import version

        pcv = version("pycocotools")
    except Exception:  # noqa: BLE001 - metadata missing in an odd install
        pcv = "unknown"
    man = CacheManifest(BUILDER_NAME, BUILDER_VERSION, {"crowd": crowd}, split, ann_path.name, ann_sha,
                        ids, empty, num_instances, complete=False, pycocotools=str(pcv))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WsssBenchError(f"cannot create the mask cache folder ({e.strerror or e})", out_dir) from None
    _write_manifest(man_path, man)
    tasks = [(info, by_image.get(info["id"], []), str(out_dir), crowd, skip_existing) for info in images]
    n_workers = max(1, min(workers if workers else (os.cpu_count() or 1), len(tasks) or 1))
    done = 0

    def count(_: object) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(tasks))

    if n_workers == 1:
        for t in tasks:
            count(_build_one(t))
    else:
        run_in_processes(_build_one, tasks, n_workers, count)
    secs = time.perf_counter() - t0
    man.complete = True
    man.seconds = round(secs, 3)
    _write_manifest(man_path, man)
    return PrepareResult(out_dir, man_path, len(images), len(empty), num_instances, secs, status)


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


class COCOSegmentation(SegDataset):
    """MS COCO 2014 ``train``/``val`` with semantic masks from the cache or a folder of masks.

    Options: ``crowd`` (``ignore``/``background``, must match the cache), ``cache`` (folder of
    ``prepare``; default ``<root>/wsss-bench-masks``), ``masks`` (a folder of pre-converted masks,
    ``<masks>/<split>2014/<id>.png`` or ``<masks>/<id>.png``; the split is every
    ``COCO_<split>2014_*.png`` in it), ``mask_ids`` (``contiguous`` or ``coco``: raw category ids
    remapped to 1..80), ``keep_empty`` (with a cache: keep images without annotations, whose mask
    is all background). Image-level labels come from the masks.
    """

    name = "coco"

    def __init__(self, root: str | os.PathLike, split: str, crowd: str = "ignore",
                 masks: str | os.PathLike | None = None, mask_ids: str = "contiguous",
                 keep_empty: bool = False, cache: str | os.PathLike | None = None):
        if split not in COCO_SPLITS:
            raise WsssBenchError(f"unknown coco split {split!r} (expected {', '.join(COCO_SPLITS)})")
        if crowd not in CROWD_RULES:
            raise WsssBenchError(f"crowd must be one of {', '.join(CROWD_RULES)}, got {crowd!r}")
        if mask_ids not in MASK_ID_KINDS:
            raise WsssBenchError(f"mask_ids must be one of {', '.join(MASK_ID_KINDS)}, got {mask_ids!r}")
        if masks is not None and cache is not None:
            raise WsssBenchError("give either masks= (pre-converted masks) or cache= (prepared masks), not both")
        if masks is None and mask_ids != "contiguous":
            raise WsssBenchError("mask_ids=coco applies to a folder of pre-converted masks (masks=DIR)")
        root = resolve_coco_root(root)
        self.image_dir = f"{split}2014"
        require_dir(root / self.image_dir, "COCO image")
        self.crowd = crowd
        self.mask_ids = mask_ids
        self.keep_empty = bool(keep_empty)
        self.warnings: list[str] = []
        self.manifest_path: Path | None = None
        if masks is not None:
            if keep_empty:
                raise WsssBenchError("keep_empty applies to masks built from the annotations; a folder of "
                                     "pre-converted masks defines the split by its files")
            mdir = Path(masks)
            require_dir(mdir, "mask")
            if (mdir / self.image_dir).is_dir():
                mdir = mdir / self.image_dir
            prefix = f"COCO_{split}2014_"
            ids = sorted(p.stem for p in mdir.glob(f"{prefix}*.png"))
            if not ids:
                raise WsssBenchError(f"no masks named {prefix}*.png", mdir)
            self.mask_dir = mdir
            self.mask_source = f"pre-converted masks ({mask_ids} ids)"
        else:
            cdir = cache_dir(root, split, cache)
            man_path = cdir / MANIFEST
            if not man_path.is_file():
                raise WsssBenchError(
                    f"no prepared COCO masks here; run `wsss-bench datasets prepare coco --data-root {root} "
                    f"--split {split}` (or pass masks=DIR)", cdir)
            man = read_manifest(man_path)
            ann_path = annotation_path(root, split)
            if not ann_path.is_file():
                raise WsssBenchError("annotation file needed to validate the mask cache is missing", ann_path)
            why = manifest_mismatch(man, crowd, sha256_file(ann_path))
            if why is None and man.split != split:
                why = f"foreign cache: built for split {man.split}, requested {split}"
            if why is None and not man.complete:
                why = "incomplete cache (prepare was interrupted); rerun `wsss-bench datasets prepare coco`"
            if why is not None:
                raise WsssBenchError(why, man_path)
            ids = list(man.ids) + (sorted(man.empty_ids) if keep_empty else [])
            ids.sort()
            self.mask_dir = cdir
            self.manifest_path = man_path
            self.mask_source = f"cache (builder v{man.builder_version}, crowd={crowd})"
        for i in ids:
            why = id_problem(i)
            if why is not None:
                raise WsssBenchError(why, self.mask_dir)
        super().__init__(root, split, COCO, ids)
        expected = PROTOCOL_SPLIT_SIZES["coco"].get(split)
        if expected is not None and len(self.ids) != expected:
            self.warnings.append(
                f"split {split} has {len(self.ids)} images; the protocol's coco {split} has {expected} "
                "(fine for a subset, not comparable with published numbers)")

    def image_path(self, image_id: str) -> Path:
        return safe_join(self.root, f"{self.image_dir}/{image_id}.jpg")

    def mask_path(self, image_id: str) -> Path:
        return safe_join(self.mask_dir, f"{image_id}.png")

    def load_mask(self, image_id: str) -> np.ndarray:
        p = self.mask_path(image_id)
        mask = read_checked(read_index_png, p)
        if self.mask_ids == "coco":
            mask = remap_raw_ids(mask, p)
        return mask

    def load_labels(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        assert mask is not None
        return labels_from_mask(mask, self.classes.num_classes, self.mask_path(image_id))

    def fingerprint(self) -> str:
        base = fingerprint_of({i: self.mask_path(i) for i in self.ids})
        if self.mask_ids == "contiguous":
            return base
        return fingerprint_of({f"{base}\tmask_ids={self.mask_ids}": None})

    def describe(self) -> dict:
        d = super().describe()
        d.update({"masks": self.mask_source, "mask_dir": str(self.mask_dir), "crowd": self.crowd,
                  "keep_empty": self.keep_empty, "warnings": list(self.warnings)})
        if self.manifest_path is not None:
            d["manifest"] = str(self.manifest_path)
        return d
