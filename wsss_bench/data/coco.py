"""MS COCO 2014: semantic masks from the instance annotations, a validated PNG cache, and the dataset.

Layout (``root``)::

    train2014/COCO_train2014_<12 digits>.jpg
    val2014/COCO_val2014_<12 digits>.jpg
    annotations/instances_{train,val}2014.json

Semantic masks follow PROTOCOL.md ("COCO semantic masks"): each non-crowd instance is rasterised
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
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsss_bench.data.base import SegDataset, fingerprint_of, labels_from_mask, safe_join
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


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary uint8 mask of one annotation (``COCO.annToMask`` without a ``COCO`` object)."""
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        return np.zeros((height, width), dtype=np.uint8)
    if isinstance(segm, dict):
        size = segm.get("size")
        if size is not None and tuple(size) != (height, width):
            raise WsssBenchError(
                f"annotation {ann.get('id')}: RLE size {list(size)} differs from image size {[height, width]}")
    try:
        m = mask_utils.decode(ann_to_rle(segm, height, width))
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise WsssBenchError(f"annotation {ann.get('id')}: bad segmentation ({e})") from None
    if m.ndim == 3:  # frPyObjects on a list of RLE dicts; not produced by COCO itself
        m = m.max(axis=2)
    return m


def semantic_mask(anns: Iterable[dict], height: int, width: int, crowd: str = "ignore",
                  cat_to_index: dict[int, int] | None = None) -> np.ndarray:
    """Semantic class-index mask (uint8 HxW) of one image's instance annotations.

    Non-crowd instances are painted from the largest to the smallest, so the smaller instance wins
    an overlap (size = the annotation's ``area`` field as coco2voc uses it, the pixel count when the
    field is missing; equal sizes: the lower annotation id wins). Crowd regions then become
    ``IGNORE_INDEX`` (``crowd="ignore"``) or stay background (``crowd="background"``) on the pixels
    no instance covers. Raw category ids never reach the mask: each maps to 1..80.
    """
    if crowd not in CROWD_RULES:
        raise WsssBenchError(f"crowd must be one of {', '.join(CROWD_RULES)}, got {crowd!r}")
    cmap = _CAT_TO_INDEX if cat_to_index is None else cat_to_index
    # pycocotools decodes column-major; painting into a column-major canvas avoids strided copies
    out = np.zeros((height, width), dtype=np.uint8, order="F")
    painted: list[tuple[float, int, int, np.ndarray]] = []
    crowd_masks: list[np.ndarray] = []
    for ann in anns:
        cid = ann.get("category_id")
        if cid not in cmap:
            raise WsssBenchError(f"annotation {ann.get('id')}: category id {cid!r} is not a COCO category")
        m = ann_to_mask(ann, height, width)
        if ann.get("iscrowd", 0):
            crowd_masks.append(m)
            continue
        area = ann.get("area")
        size = float(area) if area is not None else float(m.sum())
        painted.append((size, int(ann.get("id", 0)), cmap[cid], m))
    painted.sort(key=lambda t: (-t[0], -t[1]))
    for _, _, index, m in painted:
        np.copyto(out, index, where=m.astype(bool, copy=False))
    if crowd == "ignore" and crowd_masks:
        covered = np.zeros((height, width), dtype=bool, order="F")
        for m in crowd_masks:
            covered |= m.astype(bool, copy=False)
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


def load_instances(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Images (sorted by id stem) and annotations grouped by image id, from an instances JSON."""
    if not path.is_file():
        raise WsssBenchError("COCO instances annotation file not found", path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WsssBenchError(f"cannot read COCO annotation JSON ({e})", path) from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise WsssBenchError("not a COCO instances file (needs 'images' and 'annotations')", path)
    images = []
    for img in data["images"]:
        try:
            stem = Path(img["file_name"]).stem
            info = {"id": int(img["id"]), "stem": stem, "height": int(img["height"]), "width": int(img["width"])}
        except (KeyError, TypeError, ValueError):
            raise WsssBenchError(f"image entry {img!r:.80} lacks id/file_name/height/width", path) from None
        why = id_problem(stem)
        if why is not None:
            raise WsssBenchError(f"image {info['id']}: {why}", path)
        images.append(info)
    images.sort(key=lambda i: i["stem"])
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    return images, by_image


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


def read_manifest(path: Path) -> CacheManifest:
    if not path.is_file():
        raise WsssBenchError("mask cache manifest not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CacheManifest(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
        raise WsssBenchError(f"not a wsss-bench mask cache manifest ({e})", path) from None


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
    """Worker: build and write one image's mask; returns (id, instance count)."""
    info, anns, out_dir, crowd, skip_existing = task
    out = Path(out_dir) / f"{info['stem']}.png"
    if not (skip_existing and out.is_file()):
        try:
            mask = semantic_mask(anns, info["height"], info["width"], crowd)
        except WsssBenchError as e:
            raise WsssBenchError(f"image {info['stem']}: {e.message}") from None
        write_mask_png(out, mask)
    return info["stem"], len(anns)


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
    root = resolve_coco_root(root)
    ann_path = Path(annotations) if annotations is not None else annotation_path(root, split)
    out_dir = cache_dir(root, split, cache)
    man_path = out_dir / MANIFEST
    if not ann_path.is_file():
        raise WsssBenchError("COCO instances annotation file not found", ann_path)
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
    t0 = time.perf_counter()
    images, by_image = load_instances(ann_path)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(man_path, man.to_json())
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
    atomic_write_json(man_path, man.to_json())
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
        mask = read_index_png(p)
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
