"""Method adapters discovered through the entry-point group ``wsss_bench.methods``.

A third-party package adds a method by declaring one entry point::

    [project.entry-points."wsss_bench.methods"]
    my-method = "my_package.adapter:MyAdapter"

See :class:`wsss_bench.plugins.Registry` for loading and the warning a broken plug-in gives.
"""

from __future__ import annotations

from wsss_bench.methods.base import MethodAdapter
from wsss_bench.plugins import Registry

GROUP = "wsss_bench.methods"
REGISTRY = Registry(GROUP, MethodAdapter, "method")


def method_names() -> list[str]:
    return REGISTRY.names()


def load_method(name: str) -> type[MethodAdapter]:
    """The adapter class registered as ``name``; unknown or broken -> WsssBenchError."""
    return REGISTRY.load(name)


def installed_methods() -> dict[str, type[MethodAdapter]]:
    """All loadable adapters; each broken plug-in is skipped with a warning naming it."""
    return REGISTRY.installed()
