"""Comparison reports: leaderboards, paired bootstrap comparisons, published baselines, VOC export.

Records -> pandas DataFrame -> renderers (Markdown, HTML from a jinja2 template with pandas Styler
tables, CSV, LaTeX, JSON, plots). A leaderboard is regenerated from records, never edited by hand.

The names below are loaded on first use (PEP 562), so ``wsss-bench compare`` imports neither pandas
nor matplotlib and no command here imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule defining it
_EXPORTS = {
    "paired_bootstrap": "bootstrap",
    "METRICS": "descriptors", "MetricSpec": "descriptors", "get_metric": "descriptors",
    "FORMATS": "leaderboard", "build_leaderboard": "leaderboard",
    "ReportWarning": "table", "SkippedRecordWarning": "table",
    "export_voc_test": "voc_export",
}

__all__ = ["FORMATS", "METRICS", "MetricSpec", "ReportWarning", "SkippedRecordWarning", "build_leaderboard",
           "export_voc_test", "get_metric", "paired_bootstrap"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
