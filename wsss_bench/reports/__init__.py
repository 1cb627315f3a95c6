"""Comparison reports: leaderboards, paired bootstrap comparisons, published baselines, VOC export.

Records -> pandas DataFrame -> renderers (Markdown, HTML from a jinja2 template with pandas Styler
tables, CSV, LaTeX, JSON, plots). A leaderboard is regenerated from records, never edited by hand.
"""

from __future__ import annotations

from wsss_bench.reports.bootstrap import paired_bootstrap
from wsss_bench.reports.descriptors import METRICS, MetricSpec, get_metric
from wsss_bench.reports.leaderboard import FORMATS, build_leaderboard
from wsss_bench.reports.table import ReportWarning, SkippedRecordWarning
from wsss_bench.reports.voc_export import export_voc_test

__all__ = ["FORMATS", "METRICS", "MetricSpec", "ReportWarning", "SkippedRecordWarning", "build_leaderboard",
           "export_voc_test", "get_metric", "paired_bootstrap"]
