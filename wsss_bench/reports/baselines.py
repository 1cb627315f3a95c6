"""Published numbers of the built-in methods (``baselines/published.csv``), with their sources.

These are what the papers and repositories claim, typed in from the cited source; they are shown
beside measured rows on a leaderboard and never ranked with them. Columns: ``method``, ``variant``,
``backbone``, ``dataset``, ``split``, ``stage`` (``pseudo_label`` | ``segmentation``), ``miou``
(percent, empty where the source states none), ``includes`` (CRF, saliency, refinement...),
``source``, ``source_url``, ``verified_in`` (where this project read the number: abstract,
repository README, or the docs/methods.md notes taken from the paper).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from wsss_bench.errors import WsssBenchError

COLUMNS = ("method", "variant", "backbone", "dataset", "split", "stage", "miou", "includes", "source",
           "source_url", "verified_in")
STAGES = ("pseudo_label", "segmentation")


def default_path() -> Path | None:
    """``baselines/published.csv`` of the source tree (or ``$WSSS_BENCH_BASELINES``), if present."""
    env = os.environ.get("WSSS_BENCH_BASELINES")
    if env:
        return Path(env)
    p = Path(__file__).resolve().parents[2] / "baselines" / "published.csv"
    return p if p.is_file() else None


def load_baselines(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The published numbers as a DataFrame (one row per claim; ``miou`` float, NaN where none).

    Raises :class:`WsssBenchError` naming the file if it is missing or malformed.
    """
    p = Path(path) if path is not None else default_path()
    if p is None:
        raise WsssBenchError("published baselines not found (baselines/published.csv is part of the source "
                             "tree; set WSSS_BENCH_BASELINES to its path)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise WsssBenchError(f"cannot read published baselines ({e})", p) from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise WsssBenchError(f"published baselines lack columns {', '.join(missing)}", p)
    df = df[list(COLUMNS)].copy()
    try:
        df["miou"] = [float(v) if v.strip() else float("nan") for v in df["miou"]]
    except ValueError as e:
        raise WsssBenchError(f"published baselines: miou must be a number or empty ({e})", p) from None
    bad = [s for s in df["stage"] if s and s not in STAGES]
    if bad:
        raise WsssBenchError(f"published baselines: unknown stage {bad[0]!r} (expected {', '.join(STAGES)})", p)
    empty_src = df.index[df["source"].str.strip() == ""].tolist()
    if empty_src:
        raise WsssBenchError(f"published baselines: row {empty_src[0] + 2} has no source", p)
    return df.reset_index(drop=True)


def matching(baselines: pd.DataFrame, method: str, dataset: str, split: str, kind: str) -> pd.DataFrame:
    """Published rows for one method on one dataset/split/stage (method names compared loosely)."""
    key = method.lower().replace("_", "-")
    m = baselines["method"].str.lower().str.replace("_", "-") == key
    return baselines[m & (baselines["dataset"] == dataset) & (baselines["split"] == split)
                     & (baselines["stage"] == kind) & baselines["miou"].notna()]
