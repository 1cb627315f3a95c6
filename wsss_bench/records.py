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
``checkpoint``, ``checkpoint_sha256``, ``timings``; segmenter runs add ``segmenter``; segmenters
trained by ``train-seg`` add ``pipeline`` {method, pseudo_record, pseudo_fingerprint, pseudo_miou,
threshold, recipe, segmenter} and ``training`` {log, loss_plot, iterations, seconds}.

Paths (:data:`PATH_FIELDS`: ``checkpoint``, ``data_root``, ``cams_dir``, ``pseudo_dir``, ...) are
stored relative to the folder of the record file, so a committed folder of records still finds its
maps, data and weights in a clone; :func:`read_record` turns them back into absolute paths. The
checkpoint's identity is its SHA-256 (``checkpoint_sha256``), never its path. The protocol the
records follow is ``docs/protocol.md`` (the ``protocol_version`` field names its version).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench import PROTOCOL_VERSION, __version__
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_path

KINDS = ("pseudo_label", "segmentation")
REQUIRED_FIELDS = ("protocol_version", "kind", "dataset", "split", "num_images", "fingerprint", "classes", "metrics")

#: Record fields that hold file-system paths (a tuple is a path into nested dicts). Written
#: relative to the record's folder by :func:`write_record`, made absolute by :func:`read_record`.
#: A stage that stores another path adds its field here (only strings at these keys are touched).
PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("checkpoint",), ("data_root",), ("cams_dir",), ("pseudo_dir",), ("pred_dir",), ("source",),
    ("refinement", "saliency", "dir"), ("training", "log"), ("training", "loss_plot"),
    ("training", "init"), ("training", "recipe_file"), ("training", "model"),
    ("pipeline", "pseudo_dir"), ("pipeline", "pseudo_provenance"),
)


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and device; torch is imported only for a CUDA device (otherwise its version is read
    from the installed package's metadata, so a command that evaluates files never loads torch)."""
    torch = sys.modules.get("torch")
    if torch is None and device and device.startswith("cuda"):
        import torch
    if torch is not None:
        torch_version = torch.__version__
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = None
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch_version, "numpy": np.__version__,
        "platform": platform.platform(), "device": device or "cpu",
    }
    if torch is not None and device and device.startswith("cuda") and torch.cuda.is_available():
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


# -- paths relative to the record ---------------------------------------------------------------


def _map_paths(record: dict[str, Any], fn: Any) -> dict[str, Any]:
    """A copy of ``record`` with ``fn(value)`` applied to every string at a :data:`PATH_FIELDS` key."""
    out = dict(record)
    for keys in PATH_FIELDS:
        parent: Any = out
        for k in keys[:-1]:
            child = parent.get(k) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                parent = None
                break
            child = dict(child)  # copy on the way down: the caller's dicts stay untouched
            parent[k] = child
            parent = child
        if isinstance(parent, dict) and isinstance(parent.get(keys[-1]), (str, os.PathLike)):
            value = os.fspath(parent[keys[-1]])
            if value:
                parent[keys[-1]] = fn(value)
    return out


def relative_to(value: str, folder: str) -> str:
    """``value`` (absolute, or relative to the working directory) as a path relative to ``folder``.

    A relative ``value`` that already names something inside ``folder`` (a training log beside the
    record) is taken as relative to ``folder``. Returned with ``/`` separators; an absolute path is
    kept when no relative one exists (another drive on Windows).
    """
    if not os.path.isabs(value):
        if os.path.exists(os.path.join(folder, value)) or not os.path.exists(value):
            return Path(value).as_posix()
        value = os.path.abspath(value)
    try:
        return Path(os.path.relpath(value, folder)).as_posix()
    except ValueError:
        return value


def relative_paths(record: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``record`` with every path field relative to ``folder`` (the record's folder)."""
    base = os.path.abspath(folder)
    return _map_paths(record, lambda v: relative_to(v, base))


def absolute_paths(record: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``record`` with every relative path field resolved against ``folder``."""
    base = os.path.abspath(folder)
    return _map_paths(record, lambda v: v if os.path.isabs(v) else os.path.normpath(os.path.join(base, v)))


# -- writing ------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_record(out_dir: str | os.PathLike, record: dict[str, Any], counts: dict[str, np.ndarray] | None,
                 stem: str | None = None) -> Path:
    """Write ``<stem>.json`` and ``<stem>.counts.npz`` as one unit; return the JSON path.

    Both files are written to temporary names first; the counts file is renamed into place only
    once the JSON is fully written, and the JSON last, so a failure at any step (a full disk, a
    read-only folder) leaves neither a record pointing at a missing file nor an orphan counts file.
    Path fields become relative to ``out_dir`` (see :data:`PATH_FIELDS`). An OS error is a
    :class:`WsssBenchError` naming the file.
    """
    out = Path(out_dir)
    stem = slug(stem or record.get("name") or f"{record['kind']}-{record['dataset']}-{record['split']}")
    path = out / f"{stem}.json"
    npz = out / f"{stem}.counts.npz" if counts is not None else None
    rec = dict(record)
    if npz is not None:
        rec["per_image_counts"] = npz.name
    rec = relative_paths(rec, out)
    try:
        text = json.dumps(_jsonable(rec), indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise WsssBenchError(f"record is not valid JSON ({e})", path) from None
    blob = b""
    if counts is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in counts.items()})
        blob = buf.getvalue()
    npz_existed = npz is not None and npz.exists()
    current, npz_committed = path, False
    try:
        with atomic_path(path) as tmp_json:
            _write_synced(tmp_json, text.encode("utf-8"))
            if npz is not None:
                current = npz
                with atomic_path(npz) as tmp_npz:
                    _write_synced(tmp_npz, blob)
                npz_committed = True
                current = path
    except OSError as e:
        if npz_committed and not npz_existed and npz is not None:
            with contextlib.suppress(OSError):
                npz.unlink()
        what = "per-image counts" if current == npz else "record"
        raise WsssBenchError(f"cannot write {what} ({e.strerror or e})", current) from None
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# -- reading and checking -----------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


class _Checker:
    """Collects the first structural problem of a record as a message."""

    def __init__(self, rec: dict[str, Any]):
        self.rec = rec

    def fail(self, where: str, what: str, v: Any) -> None:
        raise WsssBenchError(f"malformed record: {where} must be {what}, got {_type_name(v)} {_short(v)}")

    def str_(self, d: dict[str, Any], key: str, where: str, optional: bool = True) -> None:
        v = d.get(key)
        if v is None and optional:
            return
        if not isinstance(v, str) or (not optional and not v):
            self.fail(where, "a non-empty string" if not optional else "a string or null", v)

    def num(self, d: dict[str, Any], key: str, where: str, fraction: bool = False) -> None:
        v = d.get(key)
        if v is None:
            return
        if not _is_num(v):
            self.fail(where, "a finite number or null", v)
        if fraction and not -1e-9 <= v <= 1 + 1e-9:
            self.fail(where, "a fraction in [0, 1]", v)

    def int_(self, d: dict[str, Any], key: str, where: str) -> None:
        v = d.get(key)
        if v is not None and (not _is_int(v) or v < 0):
            self.fail(where, "a non-negative integer or null", v)

    def dict_(self, d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.fail(where, "an object or null", v)
        return v

    def values(self, v: Any, n: int | None, where: str, fraction: bool = True) -> None:
        if v is None:
            return
        if not isinstance(v, list):
            self.fail(where, "a list", v)
        if n is not None and len(v) != n:
            raise WsssBenchError(f"malformed record: {where} has {len(v)} values for {n} classes")
        for i, x in enumerate(v):
            if x is not None and (not _is_num(x) or (fraction and not -1e-9 <= x <= 1 + 1e-9)):
                self.fail(f"{where}[{i}]", "a fraction in [0, 1] or null" if fraction else "a number or null", x)


def _short(v: Any) -> str:
    try:
        s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    except (RecursionError, ValueError, TypeError):
        s = "..."
    return s if len(s) <= 40 else s[:37] + "..."


def check_record(rec: Any) -> None:
    """Raise :class:`WsssBenchError` (without a path) if ``rec`` is not a well-formed run record.

    Checks the fields every report reads: required fields and their types, class-aligned lists
    of the right length, fractions in [0, 1], finite numbers, and a plain counts file name.
    """
    if not isinstance(rec, dict):
        raise WsssBenchError(f"not a run record (expected a JSON object, got {_type_name(rec)})")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise WsssBenchError(f"not a run record (missing {', '.join(missing)})")
    c = _Checker(rec)
    pv = rec["protocol_version"]
    if not (_is_int(pv) or (isinstance(pv, str) and pv.strip())):
        c.fail("protocol_version", "an integer or a string", pv)
    if rec["kind"] not in KINDS:
        c.fail("kind", f"one of {', '.join(KINDS)}", rec["kind"])
    for k in ("dataset", "split", "fingerprint"):
        c.str_(rec, k, k, optional=False)
    if not _is_int(rec["num_images"]) or rec["num_images"] < 0:
        c.fail("num_images", "a non-negative integer", rec["num_images"])
    classes = rec["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(x, str) for x in classes):
        c.fail("classes", "a non-empty list of class names", classes)
    n = len(classes)
    m = rec["metrics"]
    if not isinstance(m, dict):
        c.fail("metrics", "an object", m)
    c.num(m, "miou", "metrics.miou", fraction=True)
    for k in ("iou", "precision", "recall", "fp_ratio", "fn_ratio"):
        c.values(m.get(k), n, f"metrics.{k}")
    for k in ("pixel_accuracy", "fw_iou"):
        c.num(m, k, f"metrics.{k}", fraction=True)
    c.int_(m, "num_valid_classes", "metrics.num_valid_classes")
    for k in ("name", "method", "variant", "backbone", "segmenter", "checkpoint_sha256", "interpretation",
              "label_source", "per_image_counts", *(keys[0] for keys in PATH_FIELDS if len(keys) == 1)):
        c.str_(rec, k, k)
    pic = rec.get("per_image_counts")
    if pic is not None and (Path(pic).name != pic or pic.startswith(".") or "\\" in pic):
        c.fail("per_image_counts", "a plain file name beside the record", pic)
    c.num(rec, "best_threshold", "best_threshold")
    c.int_(rec, "images_missing_class_maps", "images_missing_class_maps")
    c.int_(rec, "limit", "limit")
    settings = rec.get("settings")
    if settings is not None and not isinstance(settings, (dict, str)):
        c.fail("settings", "an object, a string or null", settings)
    if isinstance(settings, dict):
        c.str_(settings, "name", "settings.name")
    for block, keys in (("calibrated", ("threshold", "miou")), ("native", ("threshold", "miou")),
                        ("timings", ("images_per_second", "seconds", "peak_memory_mb", "peak_rss_mb",
                                     "peak_device_memory_mb"))):
        d = c.dict_(rec, block, block)
        for k in keys:
            c.num(d, k, f"{block}.{k}", fraction=k == "miou")
    c.str_(c.dict_(rec, "environment", "environment"), "device", "environment.device")
    c.str_(c.dict_(rec, "environment", "environment"), "device_name", "environment.device_name")
    sweep = c.dict_(rec, "sweep", "sweep")
    if sweep:
        c.values(sweep.get("thresholds"), None, "sweep.thresholds", fraction=False)
        nt = len(sweep["thresholds"]) if isinstance(sweep.get("thresholds"), list) else None
        c.values(sweep.get("miou"), nt, "sweep.miou")
    pipe = c.dict_(rec, "pipeline", "pipeline")
    for k in ("method", "pseudo_record", "pseudo_fingerprint", "recipe", "segmenter"):
        c.str_(pipe, k, f"pipeline.{k}")
    c.num(pipe, "pseudo_miou", "pipeline.pseudo_miou", fraction=True)
    c.num(pipe, "threshold", "pipeline.threshold")
    train = c.dict_(rec, "training", "training")
    for k in ("log", "loss_plot"):
        c.str_(train, k, f"training.{k}")
    c.int_(train, "iterations", "training.iterations")
    c.num(train, "seconds", "training.seconds")


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a record (:func:`check_record`); path fields come back absolute.

    Any problem is a one-line :class:`WsssBenchError` naming the file. ``_path`` holds the file.
    """
    p = Path(path)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"), parse_constant=_strict_constant)
    except OSError as e:
        raise WsssBenchError(f"cannot read record ({e.strerror})", p) from None
    except UnicodeDecodeError:
        raise WsssBenchError("not a valid JSON record (not UTF-8 text)", p) from None
    except json.JSONDecodeError as e:
        raise WsssBenchError(f"not a valid JSON record ({e.msg} at line {e.lineno})", p) from None
    except (ValueError, RecursionError) as e:
        raise WsssBenchError(f"not a valid JSON record ({e})", p) from None
    try:
        check_record(rec)
    except WsssBenchError as e:
        raise WsssBenchError(e.message, p) from None
    rec = absolute_paths(rec, p.parent)
    rec["_path"] = str(p)
    return rec


def counts_path(record: dict[str, Any]) -> Path | None:
    """The per-image counts file of a record read by :func:`read_record` (``None`` if it has none)."""
    name = record.get("per_image_counts")
    if not name:
        return None
    return Path(record.get("_path") or ".").parent / name


def read_counts(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-image counts of a record read by :func:`read_record`: ``ids`` [N], ``tp``/``fp``/``fn``
    [N, C] with C the record's class count; anything else is a :class:`WsssBenchError` naming the file."""
    p = counts_path(record)
    if p is None:
        raise WsssBenchError("record has no per-image counts", record.get("_path"))
    if not p.is_file():
        raise WsssBenchError("per-image counts file not found", p)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("ids", "tp", "fp", "fn") if k not in z.files]
            if missing:
                raise WsssBenchError(f"per-image counts lack {', '.join(missing)}", p)
            out = {k: z[k] for k in ("ids", "tp", "fp", "fn")}
    except WsssBenchError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise WsssBenchError(f"cannot read per-image counts ({e})", p) from None
    except Exception as e:  # noqa: BLE001 - truncated archives raise zlib/zipfile errors
        raise WsssBenchError(f"corrupt per-image counts ({type(e).__name__}: {e})", p) from None
    n = out["ids"].shape[0] if out["ids"].ndim == 1 else -1
    c = len(record.get("classes") or [])
    for k in ("tp", "fp", "fn"):
        a = out[k]
        if a.ndim != 2 or a.shape != (n, c) or a.dtype.kind not in "iu":
            raise WsssBenchError(f"per-image counts: {k} has shape {a.shape} and dtype {a.dtype}, expected "
                                 f"integers of shape ({n}, {c}) (images, classes)", p)
        if a.size and a.min() < 0:
            raise WsssBenchError(f"per-image counts: {k} holds negative values", p)
    if out["ids"].ndim != 1 or out["ids"].dtype.kind not in "US":
        raise WsssBenchError(f"per-image counts: ids must be a list of strings, got {out['ids'].dtype}", p)
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
