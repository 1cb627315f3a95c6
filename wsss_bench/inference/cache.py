"""The map cache (``--save-cams DIR``): each image's fused, normalised maps as ``<id>.npz``.

It doubles as a resume point: a rerun with the same method, checkpoint, settings and dataset reads
the maps back instead of running the model. ``wsss-bench-cache.json`` (the manifest) records what
the maps depend on; a cache written by a different run is refused. Each entry carries a SHA-256 of
its image id, classes and map bytes, so an entry altered or renamed after it was written is not
served: it is recomputed with a warning. The evaluator always sees the maps exactly as they are
stored (float32 by default; ``cache_dtype="float16"`` rounds them first, and the record says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_save_npz, atomic_write_json

CACHE_MANIFEST = "wsss-bench-cache.json"
CACHE_FORMAT = 2  # 1: float16 maps without checksums (wsss-bench 0.1 before protocol version 2)


def cache_identity(*, method: str, backbone: str | None, checkpoint_sha256: str | None,
                   hyperparameters: dict[str, Any], settings: dict[str, Any], dataset: str,
                   data_root: str | os.PathLike, precision: str, map_dtype: str) -> dict[str, Any]:
    """What the cached maps depend on. Entries are keyed by image id, so the dataset's folder is part
    of it: two copies of a dataset (say VOC and an edited copy) share ids but not pixels."""
    return {"format": CACHE_FORMAT, "method": method, "backbone": backbone,
            "checkpoint_sha256": checkpoint_sha256, "hyperparameters": hyperparameters, "settings": settings,
            "dataset": dataset, "data_root": os.path.abspath(str(data_root)), "precision": precision,
            "map_dtype": map_dtype}


def entry_checksum(image_id: str, classes: np.ndarray, scores: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(image_id.encode("utf-8") + b"\0")
    h.update(np.ascontiguousarray(classes, dtype=np.int64).tobytes())
    h.update(str(scores.dtype).encode() + str(tuple(scores.shape)).encode())
    h.update(np.ascontiguousarray(scores).tobytes())
    return h.hexdigest()


def open_cache(path: Path, identity: dict[str, Any], fresh: bool, is_main: bool) -> None:
    """Check (or create) the cache folder's manifest; ``fresh`` deletes the old entries."""
    manifest = path / CACHE_MANIFEST
    if manifest.is_file() and not fresh:
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WsssBenchError(f"unreadable cache manifest ({e}); use --fresh to rebuild", manifest) from None
        if not isinstance(old, dict):
            raise WsssBenchError("the cache manifest is not a JSON object; use --fresh to rebuild", manifest)
        norm = json.loads(json.dumps(identity))
        diff = [k for k in sorted(set(old) | set(norm)) if old.get(k) != norm.get(k)]
        if diff:
            raise WsssBenchError(f"the map cache was written by a different run ({', '.join(diff)} differ); "
                                 f"use --fresh to overwrite it or another --save-cams folder", manifest)
    elif is_main:
        if path.exists() and not path.is_dir():
            raise WsssBenchError("--save-cams must be a folder, but a file of that name exists", path)
        if not fresh and path.is_dir() and any(not p.name.startswith(".") for p in path.glob("*.npz")):
            # a run writes the manifest before its first entry, so these maps came from elsewhere
            raise WsssBenchError(f"holds .npz files but no {CACHE_MANIFEST}: not a wsss-bench map cache; "
                                 f"use another --save-cams folder (or --fresh to delete them)", path)
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for p in path.glob("*.npz"):
                p.unlink()
        atomic_write_json(manifest, identity)
    if is_main:
        # temporary files of entries a killed process was writing (io.atomic_path names them
        # ".<id>.<random>.tmp.npz"); never read as entries, removed so the folder holds maps only
        for p in path.glob(".*.tmp.npz"):
            with contextlib.suppress(OSError):
                p.unlink()


def write_entry(path: Path, image_id: str, classes: np.ndarray, scores: np.ndarray) -> None:
    """Write one image's maps (1-based classes, [K, H, W] scores) with its checksum, atomically."""
    classes = np.asarray(classes, dtype=np.int64)
    atomic_save_npz(path / f"{image_id}.npz", classes=classes, scores=scores,
                    sha256=np.asarray(entry_checksum(image_id, classes, scores)))


def read_entry(path: Path, image_id: str, labels: np.ndarray, size: tuple[int, int],
               dtype: str) -> tuple[np.ndarray | None, str]:
    """(maps [K, H, W] sorted by class, or None; status): ``hit``, ``miss`` or ``corrupt: <reason>``."""
    p = path / f"{image_id}.npz"
    if not p.is_file():
        return None, "miss"
    try:
        with open(p, "rb") as f, np.load(f, allow_pickle=False) as z:
            classes, scores, digest = z["classes"], z["scores"], str(z["sha256"])
    except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
        return None, f"corrupt: {p}: unreadable ({type(e).__name__}: {e})"
    if scores.dtype != np.dtype(dtype) or scores.ndim != 3 or classes.ndim != 1 or len(classes) != len(scores):
        return None, f"corrupt: {p}: not a {dtype} map entry"
    if entry_checksum(image_id, classes, scores) != digest:
        return None, f"corrupt: {p}: checksum mismatch (the entry was altered after it was written)"
    want = np.nonzero(labels)[0] + 1
    if not np.array_equal(np.sort(classes), want) or tuple(scores.shape[1:]) != tuple(size):
        return None, f"corrupt: {p}: classes or size do not match the image"
    order = np.argsort(classes)
    return scores[order], "hit"


def read_maps(path: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes, scores) of an entry this run wrote (for writing pseudo labels)."""
    with np.load(path / f"{image_id}.npz", allow_pickle=False) as z:
        return z["classes"], z["scores"]
