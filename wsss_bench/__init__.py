"""wsss-bench: one declared protocol for weakly-supervised semantic segmentation benchmarks.

The Python API (:mod:`wsss_bench.api`) is exported here lazily (PEP 562): ``import wsss_bench``
imports neither torch nor pandas; ``wsss_bench.SegEvaluator`` imports :mod:`wsss_bench.api` on
first use.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

from wsss_bench.errors import WsssBenchError  # noqa: E402

#: Names of :mod:`wsss_bench.api` exported from the package.
_API = ("EvalResult", "PseudoLabelEvaluator", "SegEvaluator", "evaluate_maps", "evaluate_predictions",
        "ground_truth", "load_records")

__all__ = ["WsssBenchError", "PROTOCOL_VERSION", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from wsss_bench import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsss_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
