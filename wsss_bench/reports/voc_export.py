"""PASCAL VOC 2012 test-server export: predicted masks -> a validated ``.tar.gz``.

The evaluation server expects, for the segmentation competition, one indexed PNG per test image at
``results/VOC2012/Segmentation/<comp>_test_cls/<id>.png`` (pixel value = class index 0..20, with the
VOC palette), where ``comp5`` is "trained on VOC data only" and ``comp6`` "trained with outside data"
(ImageNet pre-training, as every WSSS method uses, counts as outside data, so ``comp6`` is the default).
Every mask is validated before anything is packed: readable, single channel, values in 0..20, and,
when the dataset root is given, one mask per id of ``ImageSets/Segmentation/test.txt`` with the
size of its image (ids are checked to stay inside the root; an unreadable test image is an error
naming it). The archive is deterministic (sorted members, fixed mtime, owner 0).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_bench.data.classes import VOC
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_path, read_index_png

COMPETITIONS = ("comp5", "comp6")
NUM_CLASSES = 21


def _palette_png(mask: np.ndarray) -> bytes:
    im = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    im.putpalette(np.asarray(VOC.palette, dtype=np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _test_ids_and_sizes(data_root: Path) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Ids of ``ImageSets/Segmentation/test.txt`` (each checked to stay inside the root, as every
    split list is) and the size of each test image."""
    from wsss_bench.data.voc import voc_test_image_sizes

    return voc_test_image_sizes(data_root)


def export_voc_test(pred_dir: str | os.PathLike, out_path: str | os.PathLike, ids: list[str] | None = None,
                    data_root: str | os.PathLike | None = None, comp: str = "comp6") -> Path:
    """Validate ``pred_dir/<id>.png`` masks and pack them for the VOC evaluation server.

    ``ids``: the ids to export (default: the test list under ``data_root`` when given, else every
    PNG in ``pred_dir``). With ``data_root``, each mask must match its test image's size.
    Returns ``out_path``; nothing is written unless every mask is valid.
    """
    if comp not in COMPETITIONS:
        raise WsssBenchError(f"competition must be one of {', '.join(COMPETITIONS)}, got {comp!r}")
    pred = Path(pred_dir)
    if not pred.is_dir():
        raise WsssBenchError("prediction folder not found", pred)
    sizes: dict[str, tuple[int, int]] = {}
    if data_root is not None:
        list_ids, sizes = _test_ids_and_sizes(Path(data_root))
        ids = ids if ids is not None else list_ids
    if ids is None:
        ids = sorted(p.stem for p in pred.glob("*.png"))
    if not ids:
        raise WsssBenchError("no predictions to export (no .png files)", pred)
    if len(set(ids)) != len(ids):
        raise WsssBenchError("an image id is listed twice", pred)
    members: list[tuple[str, bytes]] = []
    for i in sorted(ids):
        if not isinstance(i, str) or not i or "/" in i or "\\" in i or i.startswith(".") or "\x00" in i:
            raise WsssBenchError(f"image id {i!r} is not a plain file stem", pred)
        p = pred / f"{i}.png"
        if not p.is_file():
            raise WsssBenchError(f"missing prediction for test image {i!r} (expected {p.name})", pred)
        mask = read_index_png(p)
        top = int(mask.max()) if mask.size else 0
        if top >= NUM_CLASSES:
            raise WsssBenchError(f"mask value {top} is not a VOC class index (0..{NUM_CLASSES - 1}); the server "
                                 "does not accept ignore (255) in predictions", p)
        if i in sizes and mask.shape != sizes[i]:
            h, w = sizes[i]
            raise WsssBenchError(f"prediction size {mask.shape[1]}x{mask.shape[0]} differs from the image "
                                 f"size {w}x{h}", p)
        members.append((f"results/VOC2012/Segmentation/{comp}_test_cls/{i}.png", _palette_png(mask)))
    out = Path(out_path)
    try:
        _write_archive(out, comp, members)
    except OSError as e:
        raise WsssBenchError(f"cannot write the archive ({e.strerror or e})", out) from None
    return out


def _write_archive(out: Path, comp: str, members: list[tuple[str, bytes]]) -> None:
    with atomic_path(out, suffix=".tar.gz") as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            dirs = ["results", "results/VOC2012", "results/VOC2012/Segmentation",
                    f"results/VOC2012/Segmentation/{comp}_test_cls"]
            for d in dirs:
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
