"""PASCAL VOC 2012 in its usual on-disk layout (and the SBD ``SegmentationClassAug`` masks).

Layout (``root`` is the folder holding these; ``VOCdevkit/`` or ``VOCdevkit/VOC2012/`` above it
is accepted too)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNGs, pixel value = class index, 255 = border
    ImageSets/Segmentation/{train,val,trainval,test}.txt
    SegmentationClassAug/<id>.png       optional: SBD-augmented masks for ``train_aug``
    Annotations/<id>.xml                optional: image-level labels with ``labels="xml"``

``train_aug`` (10,582 ids in the protocol) is read from a ``train_aug.txt`` list when one is found
(``ImageSets/Segmentation/train_aug.txt`` or ``<root>/train_aug.txt``, plain ids or the DeepLab
two-column form), otherwise it is every mask of ``SegmentationClassAug/`` minus the ``val`` ids.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from wsss_bench.data.base import SegDataset, read_image_size, safe_join
from wsss_bench.data.classes import VOC, ClassSet
from wsss_bench.data.layout import PROTOCOL_SPLIT_SIZES, OnBadEntry, id_problem, read_id_list, require_dir
from wsss_bench.errors import WsssBenchError

VOC_SPLITS = ("train", "val", "trainval", "test", "train_aug")


def resolve_voc_root(root: str | os.PathLike) -> Path:
    """The folder that holds ``JPEGImages/``: ``root`` itself, or ``VOC2012/`` below it."""
    root = Path(root)
    require_dir(root, "data root")
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise WsssBenchError(
        "not a VOC 2012 root: JPEGImages/ not found (expected JPEGImages/, SegmentationClass/, "
        "ImageSets/Segmentation/)", root)


def read_xml_labels(path: Path, classes: ClassSet) -> np.ndarray:
    """Multi-hot foreground labels from a VOC ``Annotations/<id>.xml``.

    Every top-level ``<object><name>`` counts, ``difficult`` ones included (as IRN's
    ``voc12/dataloader.py`` ``load_image_label_from_xml`` does); body-part names are nested deeper and
    not read. A name outside the class set is an error naming the file.
    """
    if not path.is_file():
        raise WsssBenchError("annotation XML not found", path)
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise WsssBenchError(f"cannot parse annotation XML ({e})", path) from None
    labels = np.zeros(classes.num_foreground, dtype=np.float32)
    for obj in tree.getroot().findall("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in classes.names[1:]:
            raise WsssBenchError(f"object name {name!r} is not a {classes.name} class", path)
        labels[classes.names.index(name) - 1] = 1.0
    return labels


class VOCSegmentation(SegDataset):
    """PASCAL VOC 2012 segmentation (``train``, ``val``, ``trainval``, ``test``, ``train_aug``).

    Masks are read as palette indices with Pillow, never through RGB. Image-level labels come from
    the mask (default, ``labels="mask"``) or from ``Annotations/*.xml`` (``labels="xml"``).
    ``warnings`` lists soft findings (a split size other than the protocol's), also shown by
    :meth:`describe`.
    """

    name = "voc"
    splits: tuple[str, ...] = VOC_SPLITS
    allow_xml = True

    def __init__(self, root: str | os.PathLike, split: str, labels: str = "mask",
                 classes: ClassSet = VOC, _on_bad: OnBadEntry | None = None):
        if split not in self.splits:
            raise WsssBenchError(f"unknown {self.name} split {split!r} (expected {', '.join(self.splits)})")
        if labels not in ("mask", "xml") or (labels == "xml" and not self.allow_xml):
            allowed = "mask or xml" if self.allow_xml else "mask"
            raise WsssBenchError(f"labels={labels!r} is not available for {self.name} (use {allowed})")
        vroot = self._resolve_root(root)
        self.label_source = labels
        self.warnings: list[str] = []
        self.list_source = ""
        ids = self._split_ids(vroot, split, _on_bad or self._fail_or_warn)
        if not ids:  # name the list the ids came from (the base class can only name the root)
            raise WsssBenchError(f"split {split!r} is empty: no image ids", self.list_source or vroot)
        super().__init__(vroot, split, classes, ids)
        if split == "test":
            self._mask_dir = None
        elif split == "train_aug" and not (vroot / "SegmentationClassAug").is_dir():
            # ids from a train_aug list, but no SBD masks: enough to train on pseudo labels, nothing
            # to score against (a run that needs masks says so)
            self._mask_dir = None
            self.warnings.append("split train_aug has no SegmentationClassAug/ masks: images only "
                                 "(enough for train-seg on pseudo labels, not for scoring)")
        else:
            self._mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
            require_dir(vroot / self._mask_dir, "mask")
        if labels == "xml":
            require_dir(vroot / "Annotations", "annotation")
        expected = PROTOCOL_SPLIT_SIZES.get(self.name, {}).get(split)
        if expected is not None and len(self.ids) != expected:
            self.warnings.append(
                f"split {split} has {len(self.ids)} images; the protocol's {self.name} {split} has "
                f"{expected} (fine for a subset, not comparable with published numbers)")

    # -- layout ----------------------------------------------------------------------------------

    def _fail_or_warn(self, path: Path, message: str, severity: str) -> None:
        """Default handling of a list problem: an error raises, a warning (duplicates) is recorded."""
        if severity == "error":
            raise WsssBenchError(message, path)
        self.warnings.append(f"{path}: {message}")

    def _resolve_root(self, root: str | os.PathLike) -> Path:
        return resolve_voc_root(root)

    def _list_path(self, root: Path, split: str) -> Path:
        return root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def _split_ids(self, root: Path, split: str, on_bad: OnBadEntry) -> list[str]:
        if split == "train_aug":
            return self._train_aug_ids(root, on_bad)
        path = self._list_path(root, split)
        if split == "trainval" and not path.is_file():
            self.list_source = "train.txt + val.txt"
            ids = read_id_list(self._list_path(root, "train"), on_bad)
            seen = set(ids)
            ids += [i for i in read_id_list(self._list_path(root, "val"), on_bad) if i not in seen]
            return ids
        self.list_source = str(path)
        return read_id_list(path, on_bad)

    def _train_aug_ids(self, root: Path, on_bad: OnBadEntry) -> list[str]:
        aug = root / "SegmentationClassAug"
        for cand in (self._list_path(root, "train_aug"), root / "train_aug.txt"):
            if cand.is_file():
                self.list_source = str(cand)
                return read_id_list(cand, on_bad)
        if not aug.is_dir():
            raise WsssBenchError("split train_aug needs a train_aug.txt list or the SBD masks in "
                                 "SegmentationClassAug/ (neither found)", aug)
        val = set(read_id_list(self._list_path(root, "val"), on_bad))
        self.list_source = "SegmentationClassAug/*.png minus val.txt"
        ids = []
        for p in sorted(aug.glob("*.png")):
            why = id_problem(p.stem)
            if why is not None:  # a file name no list could hold (a control character, say)
                on_bad(p, why, "error")
            elif p.stem not in val:
                ids.append(p.stem)
        return ids

    # -- access ----------------------------------------------------------------------------------

    def image_path(self, image_id: str) -> Path:
        return safe_join(self.root, f"JPEGImages/{image_id}.jpg")

    def mask_path(self, image_id: str) -> Path | None:
        if self._mask_dir is None:
            return None
        return safe_join(self.root, f"{self._mask_dir}/{image_id}.png")

    def xml_path(self, image_id: str) -> Path:
        return safe_join(self.root, f"Annotations/{image_id}.xml")

    def load_labels(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        if self.label_source == "xml":
            return read_xml_labels(self.xml_path(image_id), self.classes)
        return super().load_labels(image_id, mask)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"ids_from": self.list_source, "masks": self._mask_dir, "warnings": list(self.warnings)})
        return d


def voc_test_image_sizes(data_root: str | os.PathLike, decode: bool = True
                     ) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The ids of VOC ``ImageSets/Segmentation/test.txt`` and the (height, width) of each test image.

    For the test-server export (``wsss-bench export-voc-test --data-root``). The ids are read and
    checked like every other split (:func:`wsss_bench.data.layout.read_id_list`: inside the root,
    byte-order mark and CRLF accepted, duplicates kept once); a missing test image, or one that
    cannot be decoded (``decode=True``, the default: a truncated JPEG is caught too; ``False`` reads
    the header only), is a one-line :class:`WsssBenchError` naming the file.
    """
    ds = VOCSegmentation(data_root, "test")
    return list(ds.ids), {i: read_image_size(ds.image_path(i), decode=decode, what=f"test image {i!r}")
                          for i in ds.ids}
