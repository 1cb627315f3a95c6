"""Running a method over a split: configuration, the native pipeline, the map cache, the runner.

The package's parts, one job each: :mod:`~wsss_bench.inference.config` (what a run is asked to do,
validated up front), :mod:`~wsss_bench.inference.device` (device, autocast, memory),
:mod:`~wsss_bench.inference.tta` (views, fusion and normalisation: pure tensor code),
:mod:`~wsss_bench.inference.maps` (adapter + pipeline -> maps), :mod:`~wsss_bench.inference.loading`
(loader workers), :mod:`~wsss_bench.inference.cache` (the resumable map cache),
:mod:`~wsss_bench.inference.pseudo` (pseudo-label PNGs), :mod:`~wsss_bench.inference.refinement`
(CRF / saliency records), :mod:`~wsss_bench.inference.distributed` (torchrun) and
:mod:`~wsss_bench.inference.runner` (the run itself).
"""

from wsss_bench.inference.config import RunConfig, config_from_dict
from wsss_bench.inference.maps import build_adapter, compute_maps, resolve_settings
from wsss_bench.inference.runner import RunResult, run_method, run_segmentation_stage

__all__ = ["RunConfig", "RunResult", "build_adapter", "compute_maps", "config_from_dict", "resolve_settings",
           "run_method", "run_segmentation_stage"]
