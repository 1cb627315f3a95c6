"""Final segmentation under one recipe: train a declared segmenter on any method's pseudo labels.

- :func:`train_segmenter` (:mod:`~wsss_bench.training.loop`): the whole job behind
  ``wsss-bench train-seg``: train under a recipe (DDP under ``torchrun``, autocast, checkpoints and
  resume, a JSON-lines log and a loss plot), then score on ``val`` and write a final-segmentation
  record with its ``pipeline`` and ``training`` provenance.
- :func:`train_demo_segmenter`: the same for the demo (the tiny recipe on the synthetic set).
- :mod:`~wsss_bench.training.recipes`: recipes as versioned TOML files citing their source.
- :mod:`~wsss_bench.training.data`: pseudo-label provenance (``wsss-bench-pseudo.json``),
  validation, deterministic augmentation.
- :mod:`~wsss_bench.training.init`: ImageNet initial weights (torchvision/timm layouts) onto the
  segmenter's backbone.
"""

from __future__ import annotations

from wsss_bench.training.data import PSEUDO_JSON, pseudo_json, read_pseudo_source, write_pseudo_json
from wsss_bench.training.demo import DEMO_RECIPE, train_demo_segmenter
from wsss_bench.training.loop import TrainConfig, TrainResult, train_segmenter
from wsss_bench.training.recipes import Recipe, load_recipe, recipe_names

__all__ = ["DEMO_RECIPE", "PSEUDO_JSON", "Recipe", "TrainConfig", "TrainResult", "load_recipe", "pseudo_json",
           "read_pseudo_source", "recipe_names", "train_demo_segmenter", "train_segmenter", "write_pseudo_json"]
