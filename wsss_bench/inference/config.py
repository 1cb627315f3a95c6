"""What a run is asked to do: :class:`RunConfig`, its validation, and suite-file tables.

Every option is checked by :meth:`RunConfig.validate` before any work starts (no model is built,
no file written), so a bad value is a one-line error at once, not after the whole run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from wsss_bench.errors import WsssBenchError
from wsss_bench.records import slug

SETTINGS_NAMES = ("native", "standard")
REFINEMENTS = ("crf", "saliency", "crf+saliency")
THRESHOLD_RULES = ("best", "native", "calibrated")
CACHE_DTYPES = ("float32", "float16")
STAGES = ("pseudo", "segmentation")
#: The sweep's threshold count is bounded: its histogram is C * C * (T + 1) integers per subset.
MAX_THRESHOLDS = 10_000


@dataclass
class RunConfig:
    """Everything a pseudo-label run needs. CLI flags and suite-file keys map onto these fields."""

    method: str
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str = "train"
    checkpoint: str | None = None
    backbone: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    settings: str = "native"
    scales: tuple[float, ...] | None = None
    flip: bool | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 0
    out: str = "wsss-bench-runs"
    name: str | None = None
    save_cams: str | None = None
    #: precision of the saved maps; ``float16`` halves the cache and the evaluator then scores the
    #: float16-rounded maps (so a resumed run equals a fresh one); the record names it
    cache_dtype: str = "float32"
    fresh: bool = False
    save_pseudo: str | None = None
    threshold: str = "best"
    ignore_band: tuple[float, float] | None = None
    num_thresholds: int = 100
    limit: int | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: ``pseudo`` (localisation maps) or ``segmentation`` (a Segmenter, see
    #: :func:`wsss_bench.inference.runner.run_segmentation_stage`); ``segmenter`` names it,
    #: ``save_pred`` keeps its PNGs. Optional refinement reported as a separate record (never the
    #: headline): ``crf``, ``saliency`` or ``crf+saliency`` (EDAM's rules, :mod:`wsss_bench.refine`).
    refine: str | None = None
    saliency_dir: str | None = None
    stage: str = "pseudo"
    segmenter: str | None = None
    save_pred: str | None = None

    def run_name(self) -> str:
        if self.name:
            return self.name
        parts = [self.segmenter if self.stage == "segmentation" else self.method, self.settings]
        if self.hparams:
            parts += [f"{k}={v}" for k, v in sorted(self.hparams.items())]
        return slug("-".join(str(p) for p in parts))

    def validate(self) -> None:
        """Check every option's value; raise one :class:`WsssBenchError` naming the first bad one."""
        def choice(opt: str, value: Any, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise WsssBenchError(f"{opt} must be one of {', '.join(allowed)}, got {value!r}")

        choice("--stage", self.stage, STAGES)
        choice("--settings", self.settings, SETTINGS_NAMES + (("native+crf", "standard+crf")
                                                             if self.stage == "segmentation" else ()))
        choice("--cache-dtype", self.cache_dtype, CACHE_DTYPES)
        from wsss_bench.inference.device import check_precision

        check_precision(self.precision)
        if self.data_root is None:
            raise WsssBenchError("--data-root is required")
        if self.batch_size < 1:
            raise WsssBenchError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise WsssBenchError(f"--workers must be >= 0, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise WsssBenchError(f"--limit must be >= 1, got {self.limit}")
        if not 1 <= self.num_thresholds <= MAX_THRESHOLDS:
            raise WsssBenchError(f"--num-thresholds must be in 1..{MAX_THRESHOLDS}, got {self.num_thresholds}")
        if self.scales is not None:
            bad = [s for s in self.scales if not (math.isfinite(s) and 0 < s <= 8)]
            if not self.scales or bad:
                raise WsssBenchError(f"--scales must be numbers in (0, 8], got {list(self.scales)}")
        if self.threshold not in THRESHOLD_RULES:
            try:
                t = float(self.threshold)
            except ValueError:
                raise WsssBenchError(f"--threshold must be best, native, calibrated or a number in [0, 1), "
                                     f"got {self.threshold!r}") from None
            if not (math.isfinite(t) and 0.0 <= t < 1.0):
                raise WsssBenchError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.ignore_band is not None:
            if len(self.ignore_band) != 2:
                raise WsssBenchError(f"--ignore-band takes two numbers LO,HI, got {list(self.ignore_band)}")
            lo, hi = self.ignore_band
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
                raise WsssBenchError(f"--ignore-band LO,HI needs 0 <= LO < HI <= 1, got {lo},{hi}")
            if not self.save_pseudo:
                raise WsssBenchError("--ignore-band only applies to --save-pseudo labels; give --save-pseudo DIR")
        if self.refine is not None:
            choice("--refine", self.refine, REFINEMENTS)
            if "saliency" in self.refine and not self.saliency_dir:
                raise WsssBenchError(f"--refine {self.refine} needs --saliency DIR (one <id>.png per image)")
        if self.stage == "segmentation" and not self.segmenter:
            raise WsssBenchError("--stage segmentation needs --segmenter NAME (see `wsss-bench methods`)")
        if self.stage == "segmentation" and not self.checkpoint:
            raise WsssBenchError(f"segmenter {self.segmenter!r} needs --checkpoint")
        if self.stage == "pseudo" and not self.method:
            raise WsssBenchError("a pseudo-label run needs --method NAME (see `wsss-bench methods`)")


def config_from_dict(d: dict[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from a suite-file table; unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                 for k in unknown]
        raise WsssBenchError(f"unknown key {', '.join(hints)} in {where}")
    if d.get("stage", "pseudo") == "segmentation":
        if not d.get("segmenter"):
            raise WsssBenchError(f"{where} has stage 'segmentation' but no 'segmenter'")
        d = {"method": "", **d}
    elif "method" not in d:
        raise WsssBenchError(f"{where} has no 'method'")
    d = dict(d)
    hints = typing.get_type_hints(RunConfig)
    for key, value in d.items():
        d[key] = _coerce(value, hints[key], f"key {key!r} in {where}")
    return RunConfig(**d)


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against a RunConfig field type (``int``, ``str | None``,
    ``tuple[float, ...]``, ...); a suite-file value of the wrong type is an error naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], what) if len(inner) == 1 else value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise WsssBenchError(f"{what} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WsssBenchError(f"{what} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WsssBenchError(f"{what} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WsssBenchError(f"{what} must be a string, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise WsssBenchError(f"{what} must be a table of KEY = VALUE, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise WsssBenchError(f"{what} must be a list, got {value!r}")
        n = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        if n is not None and len(value) != n:
            raise WsssBenchError(f"{what} must be a list of {n} values, got {value!r}")
        if not value:
            raise WsssBenchError(f"{what} must not be empty")
        return tuple(_coerce(v, args[0], what) for v in value)
    return value
