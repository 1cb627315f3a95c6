"""Segmenters discovered through the entry-point group ``wsss_bench.segmenters``.

The built-in segmenters are declared in wsss-bench's own ``pyproject.toml`` the same way a
third-party package declares one::

    [project.entry-points."wsss_bench.segmenters"]
    my-segmenter = "my_package.seg:MySegmenter"

A plug-in that fails to import produces a warning naming it, never a crash of the listing.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from wsss_bench.errors import WsssBenchError
from wsss_bench.segmenters.base import Segmenter

GROUP = "wsss_bench.segmenters"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name)}


def _load(ep: EntryPoint) -> type[Segmenter]:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Segmenter)):
        raise TypeError(f"{ep.value} is not a Segmenter subclass")
    return cls


def segmenter_names() -> list[str]:
    """Names of all declared segmenters (loadable or not), sorted."""
    return list(_entry_points())


def load_segmenter(name: str) -> type[Segmenter]:
    """The segmenter class registered as ``name``; unknown or broken -> :class:`WsssBenchError`."""
    eps = _entry_points()
    if name not in eps:
        raise WsssBenchError(f"unknown segmenter {name!r} (installed: {', '.join(eps) or 'none'})")
    try:
        return _load(eps[name])
    except Exception as e:  # noqa: BLE001 - a plug-in can fail in any way
        raise WsssBenchError(f"segmenter plug-in {name!r} ({eps[name].value}) failed to load: "
                             f"{type(e).__name__}: {e}") from None


def installed_segmenters() -> dict[str, type[Segmenter]]:
    """All loadable segmenters; each broken plug-in is skipped with a warning naming it."""
    out: dict[str, type[Segmenter]] = {}
    for name, ep in _entry_points().items():
        try:
            out[name] = _load(ep)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping segmenter plug-in {name!r} of {GROUP} ({ep.value}): "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return out


def create_segmenter(name: str, num_classes: int, backbone: str | None = None,
                     hparams: dict[str, Any] | None = None) -> Segmenter:
    """Instantiate and build segmenter ``name`` (randomly initialised; load a checkpoint after)."""
    seg = load_segmenter(name)(num_classes, backbone=backbone, hparams=hparams)
    seg.build()
    return seg
