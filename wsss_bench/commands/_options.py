"""Shared pieces of the command-line options: choice enums and value parsers.

Every option with a fixed set of values is an :class:`enum.Enum` here, so that ``--help`` lists the
values, a wrong value is a usage error naming them, and shell completion offers them. This module is
imported at start-up: it must stay light (no torch, no numpy). The values repeat constants of
the modules that act on them (``wsss_bench.data.DATASETS``, ``wsss_bench.inference.config``);
``tests/test_cli_options.py`` checks that they agree.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from wsss_bench.errors import WsssBenchError


class Choice(str, enum.Enum):
    """A string choice; ``str(member)`` is its value (as the rest of the code expects)."""

    def __str__(self) -> str:
        return str(self.value)


def click_module() -> Any:
    """The click that typer uses: typer >= 0.29 bundles its own copy (``typer._click``), whose
    exceptions and classes are not ``click``'s; older typer uses ``click`` itself."""
    import importlib

    import typer.core

    return getattr(typer.core, "_click", None) or importlib.import_module("click")


def choice_enum(name: str, values: tuple[str, ...] | list[str]) -> type[Choice]:
    """A :class:`Choice` enum whose members are ``values`` (for an option's ``type``)."""
    return Choice(name, [(v, v) for v in values])  # type: ignore[return-value]


def value_of(v: Any) -> Any:
    """The plain value of an option: an enum member's value, anything else as it is."""
    return v.value if isinstance(v, enum.Enum) else v


Dataset = choice_enum("Dataset", ("voc", "coco", "synthetic"))
#: ``native+crf`` / ``standard+crf`` exist for ``--stage segmentation`` only (checked by RunConfig)
Settings = choice_enum("Settings", ("native", "standard", "native+crf", "standard+crf"))
Precision = choice_enum("Precision", ("fp32", "bf16", "fp16"))
Stage = choice_enum("Stage", ("pseudo", "segmentation"))
CacheDtype = choice_enum("CacheDtype", ("float32", "float16"))
Refine = choice_enum("Refine", ("crf", "saliency", "crf+saliency"))
VocLabels = choice_enum("VocLabels", ("mask", "xml"))
Crowd = choice_enum("Crowd", ("ignore", "background"))
MaskIds = choice_enum("MaskIds", ("contiguous", "coco"))
#: The demo's small models (``wsss_bench.demo.train.DEMO_MODELS``)
DemoModel = choice_enum("DemoModel", ("cam", "edam", "getam", "ad-cam", "more"))
#: ``eval --labels``: the image label set comes from the ground truth or from the map files
LabelSource = choice_enum("LabelSource", ("gt", "maps"))
#: ``eval --official``: the official evaluation scripts (``wsss_bench.metrics.official.SCRIPTS``)
OfficialScript = choice_enum("OfficialScript", ("irn", "edam", "toco"))
#: ``eval --normalize`` (``wsss_bench.io.NORMALIZE_MODES``)
Normalize = choice_enum("Normalize", ("max", "minmax"))
#: ``eval --unlabelled`` (``wsss_bench.metrics.confusion.UNLABELLED_MODES``)
Unlabelled = choice_enum("Unlabelled", ("fn", "exclude"))

#: Bound of ``--num-thresholds`` (``wsss_bench.inference.config.MAX_THRESHOLDS``): the sweep's
#: histogram holds C * C * (T + 1) integers per subset.
MAX_THRESHOLDS = 10_000


def parse_floats(text: str | None, what: str, n: int | None = None) -> tuple[float, ...] | None:
    """``"1.0,0.5"`` -> ``(1.0, 0.5)``; ``n`` numbers exactly when given. Range checks are the
    caller's (``RunConfig.validate``)."""
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise WsssBenchError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or (n is not None and len(vals) != n):
        raise WsssBenchError(f"{what} needs {n or 'at least one'} comma-separated numbers, got {text!r}")
    return vals


def parse_hparams(items: list[str] | None, flag: str = "--hparam") -> dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values read by :func:`literal`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise WsssBenchError(f"{flag} must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise WsssBenchError(f"{flag} must be KEY=VALUE with a non-empty KEY, got {item!r}")
        out[k.strip()] = literal(v.strip())
    return out


def literal(text: str) -> Any:
    """A CLI value: int, float, true/false, a comma-separated list of those, or the string itself."""
    if "," in text:
        return [literal(t) for t in text.split(",") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


#: ``export-voc-test --comp``: the VOC server's competitions (``wsss_bench.reports.voc_export.COMPETITIONS``)
VocComp = choice_enum("VocComp", ("comp6", "comp5"))


def check_output_file(path: Any, option: str) -> None:
    """Fail before any work if ``path`` cannot be written as a file: it is a folder, a parent is a
    file, or the nearest existing parent folder is not writable."""
    p = Path(path)
    if p.is_dir():
        raise WsssBenchError(f"{option} must be a file name, but this is a folder", p)
    _check_parents(p, option)
    if p.exists() and not os.access(p, os.W_OK):
        raise WsssBenchError(f"{option}: {p} is not writable", p)


def check_output_folder(path: Any, option: str) -> None:
    """Fail before any work if ``path`` cannot become a writable folder: a file of that name exists,
    a parent is a file, or the nearest existing folder is not writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WsssBenchError(f"{option} must be a folder, but a file of that name exists", p)
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise WsssBenchError(f"{option}: {p} is not writable", p)
        return
    _check_parents(p, option)


def _check_parents(p: Path, option: str) -> None:
    probe = p.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise WsssBenchError(f"{option}: {probe} is a file, so {p} cannot be written", p)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise WsssBenchError(f"{option}: {probe} is not writable", p)
