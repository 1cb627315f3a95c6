"""Run records -> leaderboard rows, grouped by what may be ranked together.

Records are only ranked against records of the same group: protocol version, dataset, split and
kind (pseudo labels or final segmentation). Everything shown is read from the records.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsss_bench.errors import WsssBenchError
from wsss_bench.records import REQUIRED_FIELDS, read_record
from wsss_bench.reports.descriptors import MetricSpec, sort_key

GROUP_FIELDS = ("protocol_version", "dataset", "split", "kind")


def collect_records(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read records from files and folders (recursively).

    A file named explicitly must be a record. In a folder, JSON files that are plainly not run
    records (no ``protocol_version`` and ``kind``: a generated ``leaderboard.json``, a config) are
    skipped; a record-like file with missing fields or broken JSON is an error naming it.
    """
    out: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(p.rglob("*.json")):
                if q.name.startswith(".") or q.resolve() in seen:
                    continue
                if not _looks_like_record(q):
                    continue
                seen.add(q.resolve())
                out.append(read_record(q))
        elif p.is_file():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(read_record(p))
        else:
            raise WsssBenchError("no such file or folder", p)
    if not out:
        raise WsssBenchError(f"no run records found in {', '.join(map(str, paths)) or '(nothing given)'}")
    return out


def _looks_like_record(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let read_record report it
    return not isinstance(obj, dict) or any(k in obj for k in ("protocol_version", "kind", "metrics"))


@dataclass
class Group:
    """Records that may be ranked together."""

    protocol_version: Any
    dataset: str
    split: str
    kind: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (str(self.protocol_version), self.dataset, self.split, self.kind)

    @property
    def title(self) -> str:
        what = "pseudo labels" if self.kind == "pseudo_label" else "segmentation"
        return f"{self.dataset} {self.split}, {what} (protocol v{self.protocol_version})"

    @property
    def slug(self) -> str:
        from wsss_bench.records import slug

        return slug(f"v{self.protocol_version}-{self.dataset}-{self.split}-{self.kind}")

    @property
    def classes(self) -> list[str]:
        return list(self.records[0]["classes"])


def group_records(records: list[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in records:
        missing = [k for k in REQUIRED_FIELDS if k not in r]
        if missing:
            raise WsssBenchError(f"not a run record (missing {', '.join(missing)})", r.get("_path"))
        g = Group(r["protocol_version"], str(r["dataset"]), str(r["split"]), str(r["kind"]))
        groups.setdefault(g.key, g).records.append(r)
    for g in groups.values():
        _unique_labels(g.records)
        names = {tuple(r["classes"]) for r in g.records}
        if len(names) > 1:
            raise WsssBenchError(f"records of {g.title} use different class lists; they cannot share a table",
                                 g.records[0].get("_path"))
    return [groups[k] for k in sorted(groups)]


def method_name(record: dict[str, Any]) -> str:
    """What produced the record: the adapter, the segmenter, or the record's name (``eval``)."""
    for k in ("method", "segmenter", "name"):
        if record.get(k):
            return str(record[k])
    return Path(record.get("_path", "run")).stem


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


def row_label(record: dict[str, Any]) -> str:
    """The run's label in tables and plots: method, variant and settings where present (unique in
    its group once :func:`group_records` has run)."""
    if record.get("_label"):
        return str(record["_label"])
    parts = [method_name(record)]
    if record.get("variant"):
        parts.append(str(record["variant"]))
    settings = record.get("settings") or {}
    if isinstance(settings, dict) and settings.get("name"):
        parts.append(str(settings["name"]))
    return " / ".join(parts)


def _mean_defined(values: list[float | None] | None, mask: list[bool] | None = None) -> float | None:
    if not values:
        return None
    vals = [v for i, v in enumerate(values) if v is not None and (mask is None or mask[i])]
    vals = [float(v) for v in vals if math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: identification, metric values (fractions) and provenance."""
    m = record.get("metrics") or {}
    iou = m.get("iou") or []
    valid = [v is not None for v in iou] if iou else None
    settings = record.get("settings") or {}
    timings = record.get("timings") or {}
    env = record.get("environment") or {}
    cal = record.get("calibrated") or {}
    nat = record.get("native") or {}
    notes = []
    if record.get("interpretation"):
        notes.append(f"interpretation: {record['interpretation']}")
    if record.get("label_source") and record["label_source"] != "gt":
        notes.append(f"labels from {record['label_source']}")
    if record.get("images_missing_class_maps"):
        notes.append(f"{record['images_missing_class_maps']} images lack a class map")
    return {
        "method": method_name(record),
        "variant": record.get("variant") or "",
        "backbone": record.get("backbone") or "",
        "settings": settings.get("name", "") if isinstance(settings, dict) else str(settings),
        "label": row_label(record),
        "miou_best": _num(m.get("miou")),
        "best_threshold": _num(record.get("best_threshold")),
        "miou_calibrated": _num(cal.get("miou")),
        "miou_native": _num(nat.get("miou")),
        "native_threshold": _num(nat.get("threshold")),
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
        "peak_memory_mb": _num(timings.get("peak_memory_mb")),
        "device": str(env.get("device_name") or env.get("device") or ""),
        "checkpoint_sha256": (record.get("checkpoint_sha256") or "")[:12],
        "notes": "; ".join(notes),
        "record": Path(record.get("_path", "")).name,
    }


def ranked_frame(group: Group, sort: MetricSpec) -> pd.DataFrame:
    """The group's rows sorted by ``sort`` (best first, missing last; ties by label), with ``rank``."""
    rows = [record_row(r) for r in group.records]
    order = sorted(range(len(rows)), key=lambda i: (sort_key(sort, rows[i].get(sort.key)),
                                                     rows[i]["label"], rows[i]["record"]))
    df = pd.DataFrame([rows[i] for i in order])
    df.insert(0, "rank", range(1, len(df) + 1))
    df.attrs["order"] = order
    return df


def per_class_frame(group: Group, order: list[int]) -> pd.DataFrame:
    """Methods x classes IoU (fractions, NaN where undefined), rows in leaderboard order."""
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
    vals = frame.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        col_max = np.nanmax(np.where(np.isnan(vals), -np.inf, vals), axis=0)
    best = (vals == col_max[None, :]) & np.isfinite(vals)
    return pd.DataFrame(best, index=frame.index, columns=frame.columns)
