"""Method adapters discovered through the entry-point group ``wsss_bench.methods``.

The built-in adapters are declared in wsss-bench's own ``pyproject.toml`` the same way a
third-party package declares one::

    [project.entry-points."wsss_bench.methods"]
    my-method = "my_package.adapter:MyAdapter"

A plug-in that fails to import produces a warning naming it, never a crash of the listing.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import MethodAdapter

GROUP = "wsss_bench.methods"


def _entry_points(group: str) -> dict[str, EntryPoint]:
    eps = entry_points(group=group)
    return {ep.name: ep for ep in sorted(eps, key=lambda e: e.name)}


def method_names() -> list[str]:
    return list(_entry_points(GROUP))


def _load(ep: EntryPoint, base: type, group: str) -> type:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{ep.value} is not a {base.__name__} subclass")
    return cls


def load_method(name: str) -> type[MethodAdapter]:
    """The adapter class registered as ``name``; unknown or broken -> WsssBenchError."""
    eps = _entry_points(GROUP)
    if name not in eps:
        known = ", ".join(eps) or "none"
        raise WsssBenchError(f"unknown method {name!r} (installed: {known})")
    try:
        return _load(eps[name], MethodAdapter, GROUP)
    except Exception as e:  # noqa: BLE001 - a plug-in can fail in any way
        raise WsssBenchError(f"method plug-in {name!r} ({eps[name].value}) failed to load: "
                             f"{type(e).__name__}: {e}") from None


def installed_methods(group: str = GROUP, base: type = MethodAdapter) -> dict[str, type]:
    """All loadable adapters; each broken plug-in is skipped with a warning naming it."""
    out: dict[str, type] = {}
    for name, ep in _entry_points(group).items():
        try:
            out[name] = _load(ep, base, group)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping plug-in {name!r} of {group} ({ep.value}): {type(e).__name__}: {e}",
                          RuntimeWarning, stacklevel=2)
    return out
