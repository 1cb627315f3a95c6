"""Samples and the dataset base class shared by VOC, COCO and the synthetic set."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from wsss_bench.data.classes import ClassSet
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import read_index_png, read_rgb_image, sha256_file


@dataclass
class Sample:
    """One image of a split.

    ``labels`` is a float32 multi-hot vector over the *foreground* classes (position ``c - 1``
    for class index ``c``); ``mask`` is the uint8 class-index ground truth (255 = ignore), or
    ``None`` for a split without ground truth (VOC ``test``).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None


def safe_join(root: Path, rel: str, what: str = "id") -> Path:
    """``root / rel``, refusing anything that would leave ``root`` (``..``, absolute paths).

    The check is lexical: the user's own symlinks inside the root (a ``JPEGImages`` linked to a
    shared copy, common on clusters) are followed; only the relative path itself may not climb out.
    """
    if not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) or "\x00" in rel:
        raise WsssBenchError(f"{what} {rel!r} is not a relative path inside the dataset root", root)
    norm = os.path.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or os.path.isabs(norm):
        raise WsssBenchError(f"{what} {rel!r} escapes the dataset root", root)
    return root / rel


def decode_failure(e: Exception) -> str:
    from PIL import Image

    if isinstance(e, Image.DecompressionBombError):
        return f"image too large ({e})"
    if isinstance(e, MemoryError):
        return "image too large to decode (out of memory)"
    return f"cannot decode image ({e or type(e).__name__})"


def read_image_size(path: Path, decode: bool = True, what: str = "image") -> tuple[int, int]:
    """(height, width) of an image file; ``decode`` also decodes the pixels (a truncated file fails).

    Anything that is not a readable image (missing, a folder, corrupt, truncated, a decompression
    bomb) is a one-line :class:`WsssBenchError` naming the file.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise WsssBenchError(f"{what} not found" if not path.is_dir() else f"{what} is a folder, not a file", path)
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            return im.height, im.width
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a malformed file
        raise WsssBenchError(decode_failure(e), path) from None


def read_checked(reader, path: Path):
    """``reader(path)`` with any exception other than :class:`WsssBenchError` (Pillow raises struct,
    index, EOF and memory errors for some malformed files) turned into one naming the file."""
    try:
        return reader(path)
    except WsssBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - the file is at fault, whatever the decoder raised
        raise WsssBenchError(decode_failure(e), path) from None


def labels_from_mask(mask: np.ndarray, num_classes: int, path: Path | str | None = None) -> np.ndarray:
    """Multi-hot foreground labels of the classes present in ``mask`` (background, ignore excluded)."""
    present = np.bincount(mask.reshape(-1), minlength=256)
    bad = [v for v in np.nonzero(present)[0] if num_classes <= v < 255]
    if bad:
        raise WsssBenchError(f"mask value {int(bad[0])} is outside the class set (0..{num_classes - 1}, 255)", path)
    return (present[1:num_classes] > 0).astype(np.float32)


class SegDataset(Dataset):
    """Base class: subclasses set ``name``, ``split``, ``root``, ``classes``, ``ids`` and
    implement :meth:`image_path` and :meth:`mask_path` (and may override :meth:`load_labels`)."""

    name: str = ""
    label_source: str = "mask"

    def __init__(self, root: str | os.PathLike, split: str, classes: ClassSet, ids: list[str]):
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.ids = list(ids)
        if not self.ids:
            raise WsssBenchError(f"split {split!r} is empty", self.root)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        raise NotImplementedError

    def has_masks(self) -> bool:
        return self.mask_path(self.ids[0]) is not None

    def load_mask(self, image_id: str) -> np.ndarray | None:
        p = self.mask_path(image_id)
        return None if p is None else read_checked(read_index_png, p)

    def load_labels(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return np.zeros(self.classes.num_foreground, dtype=np.float32)
        return labels_from_mask(mask, self.classes.num_classes, self.mask_path(image_id))

    def __getitem__(self, i: int) -> Sample:
        image_id = self.ids[i]
        image = read_checked(read_rgb_image, self.image_path(image_id))
        mask = self.load_mask(image_id)
        if mask is not None and mask.shape != image.shape[:2]:
            raise WsssBenchError(
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                f"{image.shape[1]}x{image.shape[0]}", self.mask_path(image_id))
        return Sample(image_id, image, self.load_labels(image_id, mask), mask)

    def fingerprint(self) -> str:
        """SHA-256 over the sorted ids and the SHA-256 of each ground-truth file."""
        return fingerprint_of({i: self.mask_path(i) for i in self.ids})

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "root": str(self.root),
                "num_images": len(self.ids), "label_source": self.label_source}


def fingerprint_of(gt_paths: dict[str, Path | None]) -> str:
    h = hashlib.sha256()
    for image_id in sorted(gt_paths):
        p = gt_paths[image_id]
        digest = sha256_file(p) if p is not None else ""
        h.update(f"{image_id}\t{digest}\n".encode())
    return h.hexdigest()


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate that keeps samples as a list (images differ in size)."""
    return batch
