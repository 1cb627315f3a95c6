"""Pseudo labels as training data: where they came from, checking them, and the augmented samples.

**Pseudo-label folder.** ``<id>.png`` per image of the training split: class indices (palette or
greyscale PNG), 255 ignored, the image's size. :func:`validate_pseudo_labels` checks every id
before anything is written: a missing PNG, a size other than the image's, a value outside the class
set (other than 255) is a one-line error naming the file.

**Provenance.** :func:`read_pseudo_source` reads, in order, an explicit ``pseudo_record`` (a
pseudo-label run record, or a ``wsss-bench-pseudo.json``), else ``<dir>/wsss-bench-pseudo.json``
when present, else nothing (a folder from elsewhere: the pipeline fields are ``null``). The file
``wsss-bench-pseudo.json`` that ``wsss-bench run --save-pseudo`` writes beside the PNGs
(:func:`pseudo_json` builds it) is::

    {"format": "wsss-bench-pseudo", "version": 1,
     "record": <the pseudo-label record's name>, "record_file": <its JSON path, or null>,
     "method": <method name>, "settings": <settings name>, "fingerprint": <record fingerprint>,
     "dataset": <dataset>, "split": <split>, "num_images": <int>,
     "miou": <record metrics.miou (best threshold)>,
     "threshold": <the threshold the PNGs were made at, a float in [0, 1)>,
     "threshold_rule": "best" | "native" | "calibrated" | "value",
     "labels_miou": <mIoU of the PNGs themselves (the sweep at that threshold), or null>,
     "ignore_band": [lo, hi] or null}

It has no ``kind``/``metrics``/``protocol_version`` keys, so report readers never take it for a record.

**Samples.** Sample ``g`` of the run (``g = iteration * batch + k``, ``k`` its place in the global
batch) is image ``perm_e[g mod N]`` of a per-epoch permutation (``e = g div N``, seeded by
``(seed, e)``), augmented with a generator seeded by ``(seed, iteration, k)``: a scale, a crop
position and a flip. Nothing depends on the rank or the number of ranks, so a run on any number
of processes sees the same global batches.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from wsss_bench.data.base import SegDataset, safe_join
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference.pseudo import (  # noqa: F401 - pseudo_json and write_pseudo_json are re-exported
    PSEUDO_FORMAT,
    PSEUDO_JSON,
    PSEUDO_KEYS,
    PSEUDO_VERSION,
    pseudo_json,
    write_pseudo_json,
)
from wsss_bench.io import read_index_png, read_rgb_image

# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PseudoSource:
    """Where the pseudo labels came from (every field ``None`` when unknown)."""

    dir: str
    origin: str | None = None          # "pseudo-json", "record" or None
    provenance_file: str | None = None
    record: str | None = None
    method: str | None = None
    fingerprint: str | None = None
    miou: float | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    labels_miou: float | None = None
    dataset: str | None = None
    split: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WsssBenchError(f"cannot read file ({e.strerror})", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WsssBenchError(f"not valid JSON ({e})", path) from None
    if not isinstance(obj, dict):
        raise WsssBenchError("expected a JSON object", path)
    return obj


def _num(value: Any, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WsssBenchError(f"{what} must be a number or null, got {value!r}", path)
    return float(value)


def _str(value: Any, what: str, path: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise WsssBenchError(f"{what} must be a string or null, got {value!r}", path)


def _from_pseudo_json(obj: dict[str, Any], path: Path, pseudo_dir: Path) -> PseudoSource:
    if obj.get("format") != PSEUDO_FORMAT:
        raise WsssBenchError(f"not a {PSEUDO_JSON} file (format {obj.get('format')!r})", path)
    if obj.get("version") != PSEUDO_VERSION:
        raise WsssBenchError(f"unsupported {PSEUDO_JSON} version {obj.get('version')!r} (expected {PSEUDO_VERSION})",
                             path)
    unknown = [k for k in obj if k not in PSEUDO_KEYS]
    if unknown:
        raise WsssBenchError(f"unknown key {unknown[0]!r} in {PSEUDO_JSON}", path)
    return PseudoSource(
        dir=str(pseudo_dir), origin="pseudo-json", provenance_file=str(path), record=_str(obj.get("record"), "record", path),
        method=_str(obj.get("method"), "method", path), fingerprint=_str(obj.get("fingerprint"), "fingerprint", path),
        miou=_num(obj.get("miou"), "miou", path), threshold=_num(obj.get("threshold"), "threshold", path),
        threshold_rule=_str(obj.get("threshold_rule"), "threshold_rule", path),
        labels_miou=_num(obj.get("labels_miou"), "labels_miou", path),
        dataset=_str(obj.get("dataset"), "dataset", path), split=_str(obj.get("split"), "split", path))


def _from_record(rec: dict[str, Any], path: Path, pseudo_dir: Path) -> PseudoSource:
    if rec.get("kind") != "pseudo_label":
        raise WsssBenchError(f"not a pseudo-label record (kind {rec.get('kind')!r})", path)
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    # the run records the threshold its PNGs were made at when it saved them (``pseudo_threshold``)
    return PseudoSource(
        dir=str(pseudo_dir), origin="record", provenance_file=str(path), record=_str(rec.get("name"), "name", path),
        method=_str(rec.get("method"), "method", path), fingerprint=_str(rec.get("fingerprint"), "fingerprint", path),
        miou=_num(metrics.get("miou"), "metrics.miou", path),
        threshold=_num(rec.get("pseudo_threshold"), "pseudo_threshold", path),
        threshold_rule=_str(rec.get("pseudo_threshold_rule"), "pseudo_threshold_rule", path),
        dataset=_str(rec.get("dataset"), "dataset", path), split=_str(rec.get("split"), "split", path))


def read_pseudo_source(pseudo_dir: str | os.PathLike, pseudo_record: str | os.PathLike | None = None) -> PseudoSource:
    """Provenance of the pseudo labels in ``pseudo_dir`` (see the module docstring)."""
    d = Path(pseudo_dir)
    if not d.is_dir():
        raise WsssBenchError("pseudo-label folder not found", d)
    if pseudo_record is not None:
        p = Path(pseudo_record)
        obj = _read_json(p)
        if "format" in obj:
            return _from_pseudo_json(obj, p, d)
        if "kind" in obj:
            return _from_record(obj, p, d)
        raise WsssBenchError(f"neither a pseudo-label record nor a {PSEUDO_JSON} file", p)
    p = d / PSEUDO_JSON
    if p.is_file():
        return _from_pseudo_json(_read_json(p), p, d)
    return PseudoSource(dir=str(d))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise WsssBenchError("image not found", path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise WsssBenchError(f"cannot read image header ({e})", path) from None
    return h, w


def pseudo_path(pseudo_dir: Path, image_id: str) -> Path:
    return safe_join(pseudo_dir, f"{image_id}.png", what="pseudo label of id")


def check_pseudo_label(pseudo_dir: Path, image_id: str, image_path: Path, num_classes: int) -> None:
    """One image's pseudo label: present, the image's size, values in ``0..num_classes-1`` or 255."""
    p = pseudo_path(pseudo_dir, image_id)
    if not p.is_file():
        raise WsssBenchError(f"pseudo label missing for image {image_id!r} (expected {p.name})", p)
    label = read_index_png(p)
    h, w = image_size(image_path)
    if label.shape != (h, w):
        raise WsssBenchError(f"pseudo label is {label.shape[1]}x{label.shape[0]} but image {image_id!r} is "
                             f"{w}x{h} ({image_path})", p)
    present = np.nonzero(np.bincount(label.reshape(-1), minlength=256))[0]
    bad = [int(v) for v in present if num_classes <= v < 255]
    if bad:
        raise WsssBenchError(f"pseudo label value {bad[0]} is outside the class set (0..{num_classes - 1}, "
                             f"255 ignored)", p)


def _check_one(args: tuple[str, str, str, int]) -> tuple[str, str | None] | None:
    pseudo_dir, image_id, image_path, n = args
    try:
        check_pseudo_label(Path(pseudo_dir), image_id, Path(image_path), n)
    except WsssBenchError as e:
        return (e.message, e.path)
    return None


def validate_pseudo_labels(ds: SegDataset, pseudo_dir: str | os.PathLike, ids: list[str] | None = None,
                           workers: int = 0) -> None:
    """Check the pseudo label of every id (default: all of ``ds``); the first problem found (in id
    order) is raised as a one-line :class:`WsssBenchError` naming the file."""
    d = Path(pseudo_dir)
    ids = list(ds.ids) if ids is None else ids
    items = [(str(d), i, str(ds.image_path(i)), ds.classes.num_classes) for i in ids]
    errors: list[tuple[str, str | None]] = []
    if workers > 1 and len(items) > 64:
        from wsss_bench.data.parallel import run_in_processes

        def keep(res: tuple[str, str | None] | None) -> None:
            if res is not None:  # results arrive in id order; raising stops the other workers
                raise WsssBenchError(*res)

        run_in_processes(_check_one, items, workers, keep, ordered=True)
    else:
        for it in items:
            res = _check_one(it)
            if res is not None:
                errors.append(res)
                break
    if errors:
        raise WsssBenchError(*errors[0])


# ----------------------------------------------------------------------------------------------
# Augmentation (pure)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSpec:
    crop: int
    scales: tuple[float, ...]
    scale_sampling: str = "choice"   # "choice" among scales, or "uniform" in [scales[0], scales[1]]
    flip: bool = True
    pad: str = "bottom-right"        # or "centre"


@dataclass(frozen=True)
class AugmentDraw:
    """One sample's random choices: scaled size, crop origin in the padded image, flip."""

    scale: float
    height: int
    width: int
    top: int
    left: int
    flip: bool


def draw_augment(rng: np.random.Generator, spec: AugmentSpec, height: int, width: int) -> AugmentDraw:
    """Draw the scale, then the crop origin, then the flip (that order, from ``rng``). The scaled size
    is ``int(h s) x int(w s)`` (at least 1) as in the reference's ``cv2.resize`` call."""
    if spec.scale_sampling == "uniform":
        s = float(rng.uniform(spec.scales[0], spec.scales[1]))
    else:
        s = float(spec.scales[int(rng.integers(0, len(spec.scales)))])
    h, w = max(1, int(height * s)), max(1, int(width * s))
    ph, pw = max(h, spec.crop), max(w, spec.crop)
    top = int(rng.integers(0, ph - spec.crop + 1))
    left = int(rng.integers(0, pw - spec.crop + 1))
    flip = bool(rng.random() < 0.5) if spec.flip else False
    return AugmentDraw(s, h, w, top, left, flip)


def _pad_amounts(size: int, crop: int, mode: str) -> tuple[int, int]:
    extra = max(crop - size, 0)
    if mode == "centre":
        return extra // 2, extra - extra // 2
    return 0, extra


def apply_augment(image: torch.Tensor, label: torch.Tensor, draw: AugmentDraw, spec: AugmentSpec
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one sample.

    ``image``: float [3, H, W], already normalised (so that padding with 0 pads with the mean, as the
    reference pads the raw image with the mean before subtracting it); ``label``: uint8/int [H, W].
    Bilinear (``align_corners=False``, no antialiasing, like ``cv2.INTER_LINEAR``) resize of the image,
    nearest (pixel-centre, like PIL's ``NEAREST``) of the label; pad to the crop (image 0, label 255);
    crop at the drawn origin; flip. Returns float [3, crop, crop] and int64 [crop, crop].
    """
    h, w = draw.height, draw.width
    x = image
    y = label.to(torch.float32)
    if (h, w) != tuple(image.shape[-2:]):
        x = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None], size=(h, w), mode="nearest-exact")[0, 0]
    pt, pb = _pad_amounts(h, spec.crop, spec.pad)
    pl, pr = _pad_amounts(w, spec.crop, spec.pad)
    if pt or pb or pl or pr:
        x = F.pad(x, (pl, pr, pt, pb), value=0.0)
        y = F.pad(y, (pl, pr, pt, pb), value=255.0)
    c = spec.crop
    x = x[:, draw.top:draw.top + c, draw.left:draw.left + c]
    y = y[draw.top:draw.top + c, draw.left:draw.left + c]
    if draw.flip:
        x, y = x.flip(-1), y.flip(-1)
    return x.contiguous(), y.to(torch.int64).contiguous()


def normalise_image(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], channel_order: str
                    ) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float [3, H, W] as :meth:`Segmenter.normalize` does for one image."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if channel_order == "BGR":
        x = x.flip(0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------
# The sample stream
# ----------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)


class PseudoLabelTrainSet(Dataset):
    """Map-style dataset indexed by the global sample index ``g`` (see the module docstring). Decoded
    images are cached per process up to ``cache_mb`` (the whole synthetic set fits; VOC does not)."""

    def __init__(self, ds: SegDataset, pseudo_dir: str | os.PathLike, spec: AugmentSpec, seed: int, batch: int,
                 mean: tuple[float, ...], std: tuple[float, ...], channel_order: str, ids: list[str] | None = None,
                 cache_mb: float = 256.0):
        self.ds, self.pseudo_dir, self.spec = ds, Path(pseudo_dir), spec
        self.seed, self.batch = int(seed), int(batch)
        self.mean, self.std, self.channel_order = tuple(mean), tuple(std), channel_order
        self.ids = list(ds.ids) if ids is None else list(ids)
        self._perm: tuple[int, np.ndarray] | None = None
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0

    def image_index(self, g: int) -> int:
        n = len(self.ids)
        epoch = g // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, n))
        return int(self._perm[1][g % n])

    def __len__(self) -> int:  # the stream is endless; a sampler gives the indices
        return 2**62

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Decoded image and pseudo label; kept in memory (per process) up to ``cache_mb`` in all."""
        hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        image, label = self._read(image_id)
        size = image.nbytes + label.nbytes
        if self._cached + size <= self.cache_bytes:
            self._cache[image_id] = (image, label)
            self._cached += size
        return image, label

    def _read(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb_image(self.ds.image_path(image_id))
        label = read_index_png(pseudo_path(self.pseudo_dir, image_id))
        if label.shape != image.shape[:2]:
            raise WsssBenchError(f"pseudo label is {label.shape[1]}x{label.shape[0]} but the image is "
                                 f"{image.shape[1]}x{image.shape[0]}", pseudo_path(self.pseudo_dir, image_id))
        return image, label

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[self.image_index(g)]
        image, label = self.load(image_id)
        iteration, k = divmod(int(g), self.batch)
        rng = np.random.default_rng([self.seed, iteration, k])
        draw = draw_augment(rng, self.spec, image.shape[0], image.shape[1])
        x = normalise_image(image, self.mean, self.std, self.channel_order)
        return apply_augment(x, torch.from_numpy(label), draw, self.spec)


class RankSampler(Sampler[int]):
    """Global sample indices this rank processes, iteration by iteration from ``start``: the rank's
    contiguous slice ``[rank * B / W, (rank + 1) * B / W)`` of each global batch of ``B``."""

    def __init__(self, start: int, iterations: int, batch: int, rank: int, world_size: int):
        self.start, self.iterations, self.batch = start, iterations, batch
        self.per_rank = batch // world_size
        self.offset = rank * self.per_rank

    def __iter__(self) -> Iterator[int]:
        for it in range(self.start, self.iterations):
            base = it * self.batch + self.offset
            yield from range(base, base + self.per_rank)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start) * self.per_rank
