"""Metrics that describe themselves (Quantus ``metrics/base.py`` style): key, display name, whether
higher is better, and how to format a value, so a leaderboard can sort by any of them.

Values in the leaderboard frame are fractions in [0, 1] for the IoU-type metrics, shown as
percentages in every view (tables, plots, and CSV/JSON, where such columns end in ``_pct``), and
plain numbers for timings, memory and thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wsss_bench.errors import WsssBenchError


@dataclass(frozen=True)
class MetricSpec:
    """One column of the leaderboard that can be ranked.

    ``higher_is_better`` is ``True``/``False`` for quality and cost metrics and ``None`` for a
    descriptive number (a threshold), which sorts ascending and carries no direction arrow.
    ``percent``: the value is a fraction shown as a percentage with ``digits`` decimals.
    """

    key: str
    display: str
    higher_is_better: bool | None
    percent: bool = True
    digits: int = 1
    description: str = ""

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        v = 100.0 * float(value) if self.percent else float(value)
        return f"{v:.{self.digits}f}"

    @property
    def arrow(self) -> str:
        return {True: "\u2191", False: "\u2193", None: ""}[self.higher_is_better]

    @property
    def header(self) -> str:
        return f"{self.display} {self.arrow}".strip()

    @property
    def column(self) -> str:
        """Column name in CSV and JSON: ``<key>_pct`` for values shown in percent."""
        return f"{self.key}_pct" if self.percent else self.key

    def export(self, value: float | None) -> float | None:
        """The value as CSV and JSON give it: percent where the tables show percent."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None
        return 100.0 * float(value) if self.percent else float(value)


METRICS: dict[str, MetricSpec] = {m.key: m for m in (
    MetricSpec("miou_best", "mIoU (best thr.)", True,
               description="mIoU at the threshold that maximises it on the scored images (what papers report)"),
    MetricSpec("best_threshold", "best thr.", None, percent=False, digits=2,
               description="background threshold with the highest mIoU"),
    MetricSpec("miou_calibrated", "calibrated mIoU", True,
               description="threshold chosen on the calibration subset, mIoU on the other images"),
    MetricSpec("miou_native", "native-thr. mIoU", True,
               description="mIoU at the method's own background threshold"),
    MetricSpec("miou_official", "official-script mIoU", None,
               description="what the method's own evaluation script (IRN eval_cam.py, EDAM eval.py, "
                           "ToCo/MoRe scores) prints for the same maps at the native threshold; its mean "
                           "over classes differs from the protocol's (docs/protocol.md)"),
    MetricSpec("precision", "precision", True, description="mean over classes of TP / (TP + FP)"),
    MetricSpec("recall", "recall", True, description="mean over classes of TP / (TP + FN)"),
    MetricSpec("fp_ratio", "FP ratio", False, description="mean over classes of FP / (TP + FP + FN)"),
    MetricSpec("fn_ratio", "FN ratio", False, description="mean over classes of FN / (TP + FP + FN)"),
    MetricSpec("pixel_accuracy", "pixel acc.", True, description="correct pixels / scored pixels"),
    MetricSpec("fw_iou", "fwIoU", True, description="IoU weighted by ground-truth class frequency"),
    MetricSpec("images_per_second", "images/s", True, percent=False, digits=2,
               description="throughput of the run (its device is named above the table or in the device column)"),
    MetricSpec("seconds", "seconds", False, percent=False, digits=1, description="wall-clock time of the run"),
    MetricSpec("peak_memory_mb", "peak MiB", False, percent=False, digits=0,
               description="peak memory of the run: the accelerator's when it ran on one (device), "
                           "else the process's resident memory (RSS)"),
    MetricSpec("pseudo_miou", "pseudo-label mIoU", True,
               description="mIoU of the pseudo-label PNGs the segmenter was trained on, at the threshold they "
                           "were written at (else the run's best-threshold mIoU)"),
)}


def get_metric(key: str) -> MetricSpec:
    try:
        return METRICS[key]
    except KeyError:
        raise WsssBenchError(f"unknown metric {key!r} to sort by (expected one of {', '.join(METRICS)})") from None


def sort_key(spec: MetricSpec, value: float | None) -> tuple[int, float]:
    """Ascending sort key that puts the best value first and missing values last."""
    if value is None or not math.isfinite(float(value)):
        return (1, 0.0)
    v = float(value)
    return (0, -v if spec.higher_is_better else v)
