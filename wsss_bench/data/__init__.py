"""Datasets: PASCAL VOC 2012, MS COCO 2014 and the embedded synthetic shapes set.

``build_dataset(name, root, split, **options)`` is the one entry point the rest of wsss-bench uses;
options are checked by name and value, and a bad one is a :class:`WsssBenchError`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wsss_bench.data.classes import COCO, IGNORE_INDEX, SYNTHETIC, VOC, ClassSet, get_classset
from wsss_bench.data.layout import PROTOCOL_SPLIT_SIZES, check_options
from wsss_bench.errors import WsssBenchError

if TYPE_CHECKING:
    from wsss_bench.data.base import SegDataset

DATASETS = ("voc", "coco", "synthetic")

#: Accepted options per dataset: a tuple lists the allowed values, ``None`` accepts any value.
DATASET_OPTIONS: dict[str, dict[str, tuple | None]] = {
    "voc": {"labels": ("mask", "xml")},
    "synthetic": {"labels": ("mask",)},
    "coco": {"crowd": ("ignore", "background"), "masks": None, "mask_ids": ("contiguous", "coco"),
             "keep_empty": (True, False), "cache": None},
}


def build_dataset(name: str, root: str | os.PathLike, split: str, **options) -> SegDataset:
    """Open split ``split`` of dataset ``name`` (``voc``, ``coco`` or ``synthetic``) under ``root``.

    Options: VOC ``labels="mask"|"xml"``; COCO ``crowd="ignore"|"background"``, ``masks=DIR``,
    ``mask_ids="contiguous"|"coco"``, ``keep_empty=False``, ``cache=DIR``. Options set to ``None``
    are treated as not given (convenient for CLI flags).
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise WsssBenchError(f"unknown dataset {name!r} (expected {', '.join(DATASETS)})")
    opts = {k: v for k, v in options.items() if v is not None}
    check_options(key, opts, DATASET_OPTIONS[key])
    if key == "voc":
        from wsss_bench.data.voc import VOCSegmentation

        return VOCSegmentation(root, split, **opts)
    if key == "coco":
        from wsss_bench.data.coco import COCOSegmentation

        return COCOSegmentation(root, split, **opts)
    from wsss_bench.data.synthetic import SyntheticShapes

    return SyntheticShapes(root, split, **opts)


#: Names of :mod:`wsss_bench.data.base` (which imports torch), loaded on first use so that the class
#: sets and the layout helpers import without torch.
_BASE_NAMES = ("Sample", "SegDataset", "collate_samples", "labels_from_mask", "safe_join")


def __getattr__(name: str):
    if name in _BASE_NAMES:
        from wsss_bench.data import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COCO", "DATASETS", "DATASET_OPTIONS", "IGNORE_INDEX", "PROTOCOL_SPLIT_SIZES", "SYNTHETIC", "VOC",
    "ClassSet", "Sample", "SegDataset", "build_dataset", "collate_samples", "get_classset",
    "labels_from_mask", "safe_join",
]
