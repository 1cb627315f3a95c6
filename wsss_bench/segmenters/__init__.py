"""Final-stage segmenters (DeepLab-v2/v3+, single-stage heads) under a declared test-time protocol.

- :mod:`~wsss_bench.segmenters.base`: :class:`Segmenter` (the plug-in interface) and
  :class:`TestTimeSettings` (``STANDARD_TEST_SETTINGS``: scales 0.5-1.75, flip, softmax-mean).
- :mod:`~wsss_bench.segmenters.tta`: views, fusion and prediction (pure tensor code).
- :mod:`~wsss_bench.segmenters.runner`: :func:`run_segmentation` over a dataset into a record.
- :mod:`~wsss_bench.segmenters.registry`: entry-point discovery (group ``wsss_bench.segmenters``).
"""

from wsss_bench.segmenters.base import (
    DEEPLAB_CRF,
    STANDARD_TEST_SETTINGS,
    Segmenter,
    TestTimeSettings,
)

__all__ = ["DEEPLAB_CRF", "STANDARD_TEST_SETTINGS", "Segmenter", "TestTimeSettings"]
