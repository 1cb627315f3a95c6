"""Display names of methods and segmenters ("EDAM", "DeepLab-v2") for tables, plots and papers.

Records store the adapter's registry name (``edam``, ``ad-cam``); reports show the name the paper
uses. A plug-in adapter or segmenter may declare its own ``display_name`` class attribute; the
built-in names are listed here so that a report never needs to import a network to print a name.
"""

from __future__ import annotations

import functools

#: Paper spelling of the built-in method adapters, the reference-only methods of
#: ``baselines/published.csv`` and the built-in segmenters.
BUILTIN: dict[str, str] = {
    "cam": "CAM",
    "edam": "EDAM",
    "getam": "GETAM",
    "ad-cam": "AD-CAM",
    "more": "MoRe",
    "center-prior": "centre prior",
    "toco": "ToCo",
    "irn": "IRN",
    "deeplabv2": "DeepLab-v2",
    "deeplabv3plus": "DeepLab-v3+",
}


@functools.lru_cache(maxsize=256)
def _plugin_display_name(name: str) -> str | None:
    """``display_name`` of an installed plug-in registered as ``name`` (methods, then segmenters)."""
    try:
        from importlib.metadata import entry_points

        for group in ("wsss_bench.methods", "wsss_bench.segmenters"):
            for ep in entry_points(group=group):
                if ep.name == name:
                    value = getattr(ep.load(), "display_name", None)
                    if isinstance(value, str) and value.strip():
                        return value.strip()
    except Exception:  # noqa: BLE001 - a broken plug-in must not break a report
        return None
    return None


def display_name(name: str | None) -> str:
    """The name to print for a method or segmenter registered as ``name`` (itself when unknown)."""
    if not name:
        return ""
    key = str(name)
    if key.lower() in BUILTIN:
        return BUILTIN[key.lower()]
    return _plugin_display_name(key) or key
