"""Run records -> leaderboard rows, grouped by what may be ranked together.

Records are only ranked against records of the same group: protocol version, dataset, split,
kind (pseudo labels or final segmentation) and image set (the fingerprint over the scored ids and
their ground truth, so a ``--limit 3`` run never shares a table with a full one). Everything shown
is read from the records. A malformed record found in a folder is skipped with a warning naming
the file (:class:`SkippedRecordWarning`), never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.records import REQUIRED_FIELDS, read_counts, read_record
from wsss_bench.reports.descriptors import MetricSpec, sort_key
from wsss_bench.reports.names import display_name

if TYPE_CHECKING:  # pandas is imported by the functions that build frames (``compare`` needs none)
    import pandas as pd

GROUP_FIELDS = ("protocol_version", "dataset", "split", "kind", "fingerprint")


class ReportWarning(UserWarning):
    """Something a report left out, with the reason (the CLI prints each as one line)."""


class SkippedRecordWarning(ReportWarning):
    """A file in a records folder that is not a usable run record; the message names it."""


@dataclass
class Collected:
    """Records read from files and folders, and the files skipped with the reason."""

    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def read_checked(path: Path) -> dict[str, Any]:
    """:func:`~wsss_bench.records.read_record`, plus its per-image counts file when it names one."""
    rec = read_record(path)
    if rec.get("per_image_counts"):
        read_counts(rec)  # raises WsssBenchError naming the counts file
    return rec


def collect(paths: list[str | os.PathLike]) -> Collected:
    """Read records from files and folders (recursively).

    A file named explicitly must be a record (else a :class:`WsssBenchError`). In a folder, JSON
    files that are plainly not run records (no ``protocol_version``, ``kind`` or ``metrics``: a
    generated ``leaderboard.json``, a config) are ignored; a record-like file that is malformed
    (broken JSON, missing fields, wrong types, short lists, a missing or corrupt counts file) is
    skipped with a :class:`SkippedRecordWarning` naming it.
    """
    out = Collected([])
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(p.rglob("*.json")):
                if q.name.startswith(".") or q.resolve() in seen or not _looks_like_record(q):
                    continue
                seen.add(q.resolve())
                try:
                    out.records.append(read_checked(q))
                except WsssBenchError as e:
                    reason = e.message if e.path in (None, str(q)) else str(e)
                    out.skipped.append((str(q), reason))
                    warnings.warn(f"{q}: skipped: {reason}", SkippedRecordWarning, stacklevel=2)
        elif p.is_file():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.records.append(read_checked(p))
        else:
            raise WsssBenchError("no such file or folder", p)
    if not out.records:
        extra = f" ({len(out.skipped)} malformed files skipped)" if out.skipped else ""
        raise WsssBenchError(f"no run records found in {', '.join(map(str, paths)) or '(nothing given)'}{extra}")
    return out


def collect_records(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """The records of :func:`collect` (skipped files only warned about)."""
    return collect(paths).records


def _looks_like_record(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return True  # let read_record report it
    return not isinstance(obj, dict) or any(k in obj for k in ("protocol_version", "kind", "metrics"))


@dataclass
class Group:
    """Records that may be ranked together."""

    protocol_version: Any
    dataset: str
    split: str
    kind: str
    fingerprint: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Set by :func:`group_records` when other groups share protocol, dataset, split and kind.
    siblings: int = 0

    @property
    def key(self) -> tuple:
        return (str(self.protocol_version), self.dataset, self.split, self.kind, self.fingerprint)

    @property
    def num_images(self) -> int:
        return int(self.records[0].get("num_images") or 0) if self.records else 0

    @property
    def limits(self) -> list[int]:
        return sorted({int(r["limit"]) for r in self.records if isinstance(r.get("limit"), int)})

    @property
    def title(self) -> str:
        what = "pseudo labels" if self.kind == "pseudo_label" else "segmentation"
        return f"{self.dataset} {self.split}, {what} (protocol version {self.protocol_version})"

    @property
    def image_set(self) -> str:
        """``N images, image set <fingerprint[:8]>`` (and the ``--limit`` when runs were limited)."""
        text = f"{self.num_images} images, image set {self.fingerprint[:8] or '?'}"
        if self.limits:
            text += f", --limit {', '.join(map(str, self.limits))}"
        return text

    @property
    def slug(self) -> str:
        from wsss_bench.records import slug

        return slug(f"v{self.protocol_version}-{self.dataset}-{self.split}-{self.kind}-{self.fingerprint[:8]}")

    @property
    def classes(self) -> list[str]:
        return list(self.records[0]["classes"])


def group_records(records: list[dict[str, Any]]) -> list[Group]:
    """Records split into :class:`Group`; groups sorted by protocol, dataset, split, kind and, for
    the same four, the larger image set first."""
    groups: dict[tuple, Group] = {}
    for r in records:
        missing = [k for k in REQUIRED_FIELDS if k not in r]
        if missing:
            raise WsssBenchError(f"not a run record (missing {', '.join(missing)})", r.get("_path"))
        g = Group(r["protocol_version"], str(r["dataset"]), str(r["split"]), str(r["kind"]), str(r["fingerprint"]))
        groups.setdefault(g.key, g).records.append(r)
    for g in groups.values():
        _unique_labels(g.records)
        names = {tuple(r["classes"]) for r in g.records}
        if len(names) > 1:
            raise WsssBenchError(f"records of {g.title} use different class lists; they cannot share a table",
                                 g.records[0].get("_path"))
        g.siblings = sum(1 for h in groups.values() if h.key[:4] == g.key[:4]) - 1
    return sorted(groups.values(), key=lambda g: (*g.key[:4], -g.num_images, g.fingerprint))


def method_id(record: dict[str, Any]) -> str:
    """What produced the record: the adapter (for a trained segmenter, the method whose pseudo
    labels it learnt from), the segmenter, or the record's name (``eval``)."""
    pipe = record.get("pipeline")
    if isinstance(pipe, dict) and pipe.get("method"):
        return str(pipe["method"])
    for k in ("method", "segmenter", "name"):
        if record.get(k):
            return str(record[k])
    return Path(record.get("_path", "run")).stem


def method_name(record: dict[str, Any]) -> str:
    """:func:`method_id` as the paper spells it (``EDAM``); a trained segmenter reads
    ``EDAM → DeepLab-v2``."""
    pipe = record.get("pipeline")
    name = display_name(method_id(record))
    if isinstance(pipe, dict) and pipe.get("method"):
        seg = pipe.get("segmenter") or record.get("segmenter")
        if seg:
            name += f" \u2192 {display_name(str(seg))}"
    return name


def _unique_labels(records: list[dict[str, Any]]) -> None:
    """Give every record of a group a distinct ``_label`` (the record's file stem added on a clash)."""
    for r in records:
        r.pop("_label", None)
    base = [row_label(r) for r in records]
    for r, b in zip(records, base, strict=True):
        r["_label"] = b if base.count(b) == 1 else f"{b} [{Path(r.get('_path', 'run')).stem}]"
    seen: dict[str, int] = {}
    for r in records:  # still equal (same stem in different folders): number them
        n = seen.get(r["_label"], 0)
        seen[r["_label"]] = n + 1
        if n:
            r["_label"] = f"{r['_label']} #{n + 1}"


def settings_name(record: dict[str, Any]) -> str:
    settings = record.get("settings")
    if isinstance(settings, dict):
        return str(settings.get("name") or "")
    return "" if settings is None else str(settings)


def row_label(record: dict[str, Any]) -> str:
    """The run's label in tables and plots: method, variant, recipe and settings where present
    (unique in its group once :func:`group_records` has run)."""
    if record.get("_label"):
        return str(record["_label"])
    parts = [method_name(record)]
    if record.get("variant"):
        parts.append(str(record["variant"]))
    pipe = record.get("pipeline")
    if isinstance(pipe, dict) and pipe.get("recipe"):
        parts.append(str(pipe["recipe"]))
    if settings_name(record):
        parts.append(settings_name(record))
    return " / ".join(parts)


def _mean_defined(values: list[float | None] | None, mask: list[bool] | None = None) -> float | None:
    if not values:
        return None
    vals = [v for i, v in enumerate(values) if v is not None and (mask is None or (i < len(mask) and mask[i]))]
    vals = [float(v) for v in vals if math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def pseudo_miou(pipe: dict[str, Any]) -> float | None:
    """The mIoU of the pseudo labels a segmenter was trained on: the PNGs' own score (at the threshold
    they were written at) where the run measured it, else the run's best-threshold mIoU."""
    v = pipe.get("pseudo_labels_miou")
    return _num(v if v is not None else pipe.get("pseudo_miou"))


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def peak_memory(timings: dict[str, Any]) -> tuple[float | None, str]:
    """(peak memory in MiB, what was measured): the accelerator's peak when the run had one, else
    the process's peak resident memory (the runner writes ``peak_device_memory_mb`` and
    ``peak_rss_mb``; segmenter runs ``peak_memory_mb`` with ``peak_memory_kind``)."""
    dev = _num(timings.get("peak_device_memory_mb"))
    if dev is not None:
        return dev, "device"
    rss = _num(timings.get("peak_rss_mb"))
    if rss is not None:
        return rss, "RSS"
    other = _num(timings.get("peak_memory_mb"))
    if other is not None:
        kind = str(timings.get("peak_memory_kind") or "")
        return other, "device" if kind == "device" else "RSS" if "rss" in kind.lower() else kind
    return None, ""


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: identification, metric values (fractions) and provenance."""
    m = record.get("metrics") or {}
    iou = m.get("iou") or []
    valid = [v is not None for v in iou] if iou else None
    timings = record.get("timings") or {}
    env = record.get("environment") or {}
    cal = record.get("calibrated") or {}
    nat = record.get("native") or {}
    pipe = record.get("pipeline") or {}
    notes = []
    if record.get("interpretation"):
        notes.append(f"interpretation: {record['interpretation']}")
    if record.get("label_source") and record["label_source"] not in ("gt", "mask"):
        notes.append(f"labels from {record['label_source']}")
    if record.get("images_missing_class_maps"):
        notes.append(f"{record['images_missing_class_maps']} images lack a class map")
    peak, peak_kind = peak_memory(timings)
    return {
        "method": method_name(record),
        "method_id": method_id(record),
        "variant": record.get("variant") or "",
        "backbone": record.get("backbone") or "",
        "settings": settings_name(record),
        "label": row_label(record),
        "miou_best": _num(m.get("miou")),
        "best_threshold": _num(record.get("best_threshold")),
        "miou_calibrated": _num(cal.get("miou")),
        "miou_native": _num(nat.get("miou")),
        "native_threshold": _num(nat.get("threshold")),
        "miou_official": _num((record.get("official") or {}).get("miou")),
        "official_script": (record.get("official") or {}).get("script") or "",
        "precision": _mean_defined(m.get("precision"), valid),
        "recall": _mean_defined(m.get("recall"), valid),
        "fp_ratio": _mean_defined(m.get("fp_ratio"), valid),
        "fn_ratio": _mean_defined(m.get("fn_ratio"), valid),
        "pixel_accuracy": _num(m.get("pixel_accuracy")),
        "fw_iou": _num(m.get("fw_iou")),
        "num_valid_classes": m.get("num_valid_classes"),
        "num_images": record.get("num_images"),
        "images_per_second": _num(timings.get("images_per_second")),
        "seconds": _num(timings.get("seconds")),
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "device": str(env.get("device_name") or env.get("device") or ""),
        "pseudo_miou": pseudo_miou(pipe),
        "segmenter": display_name(str(pipe.get("segmenter") or record.get("segmenter") or "")),
        "recipe": str(pipe.get("recipe") or ""),
        "checkpoint_sha256": (record.get("checkpoint_sha256") or "")[:12],
        "notes": "; ".join(notes),
        "record": Path(record.get("_path", "")).name,
    }


def ranked_frame(group: Group, sort: MetricSpec) -> pd.DataFrame:
    """The group's rows sorted by ``sort`` (best first, missing last; ties by label), with ``rank``."""
    import pandas as pd

    rows = [record_row(r) for r in group.records]
    order = sorted(range(len(rows)), key=lambda i: (sort_key(sort, rows[i].get(sort.key)),
                                                     rows[i]["label"], rows[i]["record"]))
    df = pd.DataFrame([rows[i] for i in order])
    df.insert(0, "rank", range(1, len(df) + 1))
    df.attrs["order"] = order
    return df


def per_class_frame(group: Group, order: list[int]) -> pd.DataFrame:
    """Methods x classes IoU (fractions, NaN where undefined), rows in leaderboard order."""
    import pandas as pd

    classes = group.classes
    data = []
    for i in order:
        r = group.records[i]
        iou = (r.get("metrics") or {}).get("iou") or [None] * len(classes)
        data.append([np.nan if v is None else float(v) for v in iou])
    labels = [row_label(group.records[i]) for i in order]
    return pd.DataFrame(data, index=labels, columns=classes)


def best_per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Boolean frame: True where a row holds the highest IoU of its class (all ties marked)."""
    import pandas as pd

    vals = frame.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        col_max = np.nanmax(np.where(np.isnan(vals), -np.inf, vals), axis=0) if vals.size else np.zeros(0)
    best = (vals == col_max[None, :]) & np.isfinite(vals)
    return pd.DataFrame(best, index=frame.index, columns=frame.columns)
