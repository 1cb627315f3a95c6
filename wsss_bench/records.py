"""Run records: one JSON file per evaluation, plus per-image counts in an ``.npz`` beside it.

Fields (fixed names; later stages add more): ``protocol_version``, ``kind`` (``pseudo_label`` |
``segmentation``), ``name`` (a display label), ``dataset``, ``split``, ``num_images``,
``fingerprint`` (SHA-256 over sorted ids and ground-truth file digests), ``classes``, ``metrics``
{miou, iou, precision, recall, fp_ratio, fn_ratio, pixel_accuracy, fw_iou, num_valid_classes,
num_pixels}; for pseudo labels ``sweep`` {thresholds, miou}, ``best_threshold``, ``calibrated``
{threshold, miou, num_images, calibration_images}, ``native`` {threshold, miou, metrics} when the
method has a rule; ``per_image_counts`` (file name of the ``.npz`` with ``ids``, ``tp``, ``fp``,
``fn`` [N, C] at ``counts_threshold``); ``toolkit_version``, ``created_at``, ``environment``.
Method runs add ``method``, ``variant``, ``backbone``, ``settings``, ``hyperparameters``,
``checkpoint``, ``checkpoint_sha256``, ``timings``; segmenter runs add ``segmenter``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench import PROTOCOL_VERSION, __version__
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_save_npz, atomic_write_json

KINDS = ("pseudo_label", "segmentation")
REQUIRED_FIELDS = ("protocol_version", "kind", "dataset", "split", "num_images", "fingerprint", "classes", "metrics")


def environment(device: str | None = None) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "platform": platform.platform(), "device": device or "cpu",
    }
    if device and device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def new_record(kind: str, dataset: str, split: str, classes: list[str] | tuple[str, ...],
               num_images: int, fingerprint: str, device: str | None = None, **fields: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    rec: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION, "kind": kind, "name": fields.pop("name", None),
        "dataset": dataset, "split": split, "num_images": int(num_images), "fingerprint": fingerprint,
        "classes": list(classes),
    }
    rec.update(fields)
    rec["toolkit_version"] = __version__
    rec["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rec["environment"] = environment(device)
    return rec


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s or "run"


def write_record(out_dir: str | os.PathLike, record: dict[str, Any], counts: dict[str, np.ndarray] | None,
                 stem: str | None = None) -> Path:
    """Write ``<stem>.json`` (and ``<stem>.counts.npz``) atomically; return the JSON path.

    The counts file is written first, so a record never points at a missing file.
    """
    out = Path(out_dir)
    stem = slug(stem or record.get("name") or f"{record['kind']}-{record['dataset']}-{record['split']}")
    rec = dict(record)
    if counts is not None:
        npz = out / f"{stem}.counts.npz"
        atomic_save_npz(npz, **{k: np.asarray(v) for k, v in counts.items()})
        rec["per_image_counts"] = npz.name
    path = out / f"{stem}.json"
    try:
        atomic_write_json(path, _jsonable(rec))
    except ValueError as e:
        raise WsssBenchError(f"record is not valid JSON ({e})", path) from None
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise WsssBenchError(f"cannot read record ({e.strerror})", p) from None
    except json.JSONDecodeError as e:
        raise WsssBenchError(f"not a valid JSON record ({e.msg} at line {e.lineno})", p) from None
    if not isinstance(rec, dict):
        raise WsssBenchError("not a run record (expected a JSON object)", p)
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise WsssBenchError(f"not a run record (missing {', '.join(missing)})", p)
    rec["_path"] = str(p)
    return rec


def read_counts(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-image counts of a record read by :func:`read_record`."""
    name = record.get("per_image_counts")
    if not name:
        raise WsssBenchError("record has no per-image counts", record.get("_path"))
    p = Path(record["_path"]).parent / name
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in ("ids", "tp", "fp", "fn")}
    except (OSError, KeyError, ValueError) as e:
        raise WsssBenchError(f"cannot read per-image counts ({e})", p) from None
    except Exception as e:  # noqa: BLE001 - truncated archives raise zlib/zipfile errors
        raise WsssBenchError(f"corrupt per-image counts ({type(e).__name__}: {e})", p) from None
    return out


def find_records(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into record JSON paths, sorted, deduplicated."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [q for q in p.rglob("*.json") if not q.name.startswith(".")]
        elif p.is_file():
            found.append(p)
        else:
            raise WsssBenchError("no such file or folder", p)
    return sorted(set(found))
