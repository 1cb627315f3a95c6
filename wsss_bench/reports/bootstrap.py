"""Paired bootstrap over images between two runs (docs/protocol.md, "Comparisons").

Both runs scored the same images. A resample draws N image ids with replacement (the same draw for
both runs: that is the pairing), sums each run's per-image TP/FP/FN over the draw and recomputes
mIoU as the protocol defines it (classes with TP + FP + FN > 0). The spread of the difference
A - B over the resamples gives a percentile 95% interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import miou_from_counts
from wsss_bench.records import read_counts, read_record


def _as_record(rec: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    return rec if isinstance(rec, dict) else read_record(rec)


def check_comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Refuse two records that were not scored under the same protocol on the same images."""
    pa, pb = a.get("_path"), b.get("_path")
    where = f"{Path(pa).name if pa else 'A'} vs {Path(pb).name if pb else 'B'}"
    if a.get("protocol_version") != b.get("protocol_version"):
        raise WsssBenchError(f"cannot compare: protocol versions differ ({a.get('protocol_version')} vs "
                             f"{b.get('protocol_version')}) in {where}", pb)
    for k in ("dataset", "split"):
        if a.get(k) != b.get(k):
            raise WsssBenchError(f"cannot compare: {k} differs ({a.get(k)} vs {b.get(k)}) in {where}", pb)
    if a.get("fingerprint") != b.get("fingerprint"):
        raise WsssBenchError(f"cannot compare: the evaluated image sets differ (fingerprints "
                             f"{str(a.get('fingerprint'))[:12]} vs {str(b.get('fingerprint'))[:12]}) in {where}", pb)
    if list(a.get("classes", [])) != list(b.get("classes", [])):
        raise WsssBenchError(f"cannot compare: class lists differ in {where}", pb)


def aligned_counts(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-image counts of both records in the same image order: ids, [N, 3, C] for A and for B."""
    ca, cb = read_counts(a), read_counts(b)
    ids_a = [str(i) for i in ca["ids"]]
    ids_b = [str(i) for i in cb["ids"]]
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise WsssBenchError("per-image counts list an image twice", b.get("_path"))
    if set(ids_a) != set(ids_b):
        only = sorted(set(ids_a) ^ set(ids_b))
        raise WsssBenchError(f"cannot compare: per-image counts cover different images "
                             f"({len(only)} differ, e.g. {only[0]!r})", b.get("_path"))
    pos_b = {i: n for n, i in enumerate(ids_b)}
    perm = np.array([pos_b[i] for i in ids_a], dtype=np.int64)
    stack_a = np.stack([ca["tp"], ca["fp"], ca["fn"]], axis=1).astype(np.int64)
    stack_b = np.stack([cb["tp"], cb["fp"], cb["fn"]], axis=1).astype(np.int64)[perm]
    if stack_a.shape != stack_b.shape:
        raise WsssBenchError(f"cannot compare: per-image counts have shapes {stack_a.shape[1:]} and "
                             f"{stack_b.shape[1:]}", b.get("_path"))
    return ids_a, stack_a, stack_b


def bootstrap_difference(counts_a: np.ndarray, counts_b: np.ndarray, samples: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Pure numerics: counts [N, 3, C] (TP, FP, FN) of A and B on the same N images.

    Returns the observed mIoU of each and their difference, the 2.5/97.5 percentiles of the
    resampled difference, and the share of resamples in which A's mIoU is strictly higher.
    """
    if samples < 1:
        raise WsssBenchError(f"bootstrap samples must be >= 1, got {samples}")
    n = counts_a.shape[0]
    if n == 0:
        raise WsssBenchError("cannot bootstrap over zero images")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    # weights[s, i] = how often image i was drawn in resample s; sums = weights @ counts (exact in float64)
    flat_idx = (np.arange(samples, dtype=np.int64)[:, None] * n + draws).reshape(-1)
    weights = np.bincount(flat_idx, minlength=samples * n).reshape(samples, n).astype(np.float64)
    flat_a = counts_a.reshape(n, -1).astype(np.float64)
    flat_b = counts_b.reshape(n, -1).astype(np.float64)
    sa = (weights @ flat_a).reshape(samples, 3, -1)
    sb = (weights @ flat_b).reshape(samples, 3, -1)
    miou_a = miou_from_counts(sa[:, 0], sa[:, 1], sa[:, 2])
    miou_b = miou_from_counts(sb[:, 0], sb[:, 1], sb[:, 2])
    diff = miou_a - miou_b
    ta, tb = counts_a.sum(0), counts_b.sum(0)
    obs_a = float(miou_from_counts(ta[0], ta[1], ta[2]))
    obs_b = float(miou_from_counts(tb[0], tb[1], tb[2]))
    finite = diff[np.isfinite(diff)]
    lo, hi = (np.percentile(finite, [2.5, 97.5]) if finite.size else (np.nan, np.nan))
    return {
        "miou_a": obs_a, "miou_b": obs_b, "difference": obs_a - obs_b,
        "ci_low": float(lo), "ci_high": float(hi), "confidence": 0.95,
        "share_a_better": float(np.mean(diff > 0)) if diff.size else float("nan"),
        "n_images": int(n), "samples": int(samples), "seed": int(seed),
    }


def paired_bootstrap(rec_a: dict[str, Any] | str | os.PathLike, rec_b: dict[str, Any] | str | os.PathLike,
                     samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of the mIoU difference A - B over images.

    ``rec_a``/``rec_b``: records read by :func:`~wsss_bench.records.read_record` or their paths.
    Refuses records of different protocol versions, datasets, splits, class lists or image sets.
    Returns ``difference``, ``ci_low``/``ci_high`` (95%), ``share_a_better``, ``n_images``, the
    observed ``miou_a``/``miou_b``, ``samples``, ``seed`` and the two record names.
    """
    a, b = _as_record(rec_a), _as_record(rec_b)
    check_comparable(a, b)
    _, ca, cb = aligned_counts(a, b)
    out = bootstrap_difference(ca, cb, samples=samples, seed=seed)
    out["a"] = a.get("_path") or a.get("name")
    out["b"] = b.get("_path") or b.get("name")
    return out
