"""Segmenters discovered through the entry-point group ``wsss_bench.segmenters``.

A third-party package adds one by declaring an entry point::

    [project.entry-points."wsss_bench.segmenters"]
    my-segmenter = "my_package.seg:MySegmenter"

See :class:`wsss_bench.plugins.Registry` for loading and the warning a broken plug-in gives.
"""

from __future__ import annotations

from typing import Any

from wsss_bench.plugins import Registry
from wsss_bench.segmenters.base import Segmenter

GROUP = "wsss_bench.segmenters"
REGISTRY = Registry(GROUP, Segmenter, "segmenter")


def segmenter_names() -> list[str]:
    """Names of all declared segmenters (loadable or not), sorted."""
    return REGISTRY.names()


def load_segmenter(name: str) -> type[Segmenter]:
    """The segmenter class registered as ``name``; unknown or broken -> :class:`WsssBenchError`."""
    return REGISTRY.load(name)


def installed_segmenters() -> dict[str, type[Segmenter]]:
    """All loadable segmenters; each broken plug-in is skipped with a warning naming it."""
    return REGISTRY.installed()


def create_segmenter(name: str, num_classes: int, backbone: str | None = None,
                     hparams: dict[str, Any] | None = None) -> Segmenter:
    """Instantiate and build segmenter ``name`` (randomly initialised; load a checkpoint after)."""
    seg = load_segmenter(name)(num_classes, backbone=backbone, hparams=hparams)
    seg.build()
    return seg
