"""wsss-bench: one declared protocol for weakly-supervised semantic segmentation benchmarks."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

from wsss_bench.errors import WsssBenchError  # noqa: E402

__all__ = ["WsssBenchError", "PROTOCOL_VERSION", "__version__"]
