"""Suite chaining: a pseudo-label run's PNGs -> its segmenter -> its final-segmentation record.

A ``[[run]]`` table of a ``wsss-bench run`` suite file may carry a ``train_seg`` table; after the run
has written its pseudo labels (it must have ``save_pseudo``), ``train-seg`` trains on them, with the
run's ``wsss-bench-pseudo.json`` as provenance, and writes the ``val`` record beside the run's own::

    dataset = "voc"
    data_root = "VOC2012"

    [train_seg]                      # defaults for every run's train_seg (optional)
    recipe = "deeplabv2-voc"
    init = "resnet101.pth"

    [[run]]
    method = "cam"
    checkpoint = "res50_cam.pth"
    split = "train_aug"              # the segmenter trains on the run's split
    save_pseudo = "pseudo/cam"
    threshold = "calibrated"
    train_seg = { out = "seg/cam" }  # merged over the top-level [train_seg]

    [[run]]
    method = "center-prior"
    split = "train_aug"
    save_pseudo = "pseudo/center-prior"
    train_seg = false                # no segmenter for this run

Keys (every one checked, with its type, before any run starts; see :data:`SPEC_KEYS`): ``recipe``
(or ``segmenter``, for the recipe ``<segmenter>-<dataset>``), ``init``, ``out`` (default
``<run out>/train-seg/<run name>``), ``name``, ``seed``, ``val_split``, ``settings``, ``iterations``,
``micro_batch``, ``checkpoint_every``, ``eval_batch_size``, ``fresh``, and ``device``, ``precision``,
``workers`` (default: the run's). The dataset, its root and options, and the training split are the
run's: the PNGs cover exactly the run's split, so the run may not have a ``limit``.

:func:`check_chain` is everything that can be checked before work: the keys, the recipe and its
overrides, the ImageNet init file loaded strictly onto the segmenter, the ``val`` split and its
masks, the output folder. :func:`chain_config` gives the :class:`TrainConfig` to run after the
pseudo-label run.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss_bench.errors import WsssBenchError
from wsss_bench.training.loop import CONFIG_FORMAT, CONFIG_NAME, TrainConfig, resolve_recipe

#: suite key -> its type (the keys are TrainConfig fields)
SPEC_KEYS: dict[str, type] = {
    "recipe": str, "segmenter": str, "init": str, "out": str, "name": str, "seed": int, "val_split": str,
    "settings": str, "iterations": int, "micro_batch": int, "checkpoint_every": int, "eval_batch_size": int,
    "fresh": bool, "device": str, "precision": str, "workers": int,
}
SUITE_KEY = "train_seg"


@dataclass(frozen=True)
class ChainSpec:
    """A run's ``train_seg`` table, its keys checked (``values`` holds only the keys given)."""

    values: dict[str, Any]
    where: str

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _typed(key: str, value: Any, where: str) -> Any:
    want = SPEC_KEYS[key]
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want)
    if not ok:
        kind = {bool: "true or false", int: "an integer", str: "a string"}[want]
        raise WsssBenchError(f"key {key!r} of {where} must be {kind}, got {value!r}")
    if want is int and key != "seed" and value < (0 if key == "workers" else 1):
        raise WsssBenchError(f"key {key!r} of {where} must be >= {0 if key == 'workers' else 1}, got {value}")
    return value


def check_table(table: Any, label: str, or_false: bool = False) -> dict[str, Any]:
    """A ``train_seg`` table's keys and their types checked; ``label`` names it in errors."""
    if not isinstance(table, dict):
        extra = " (or false)" if or_false else ""
        raise WsssBenchError(f"{label} must be a table of KEY = VALUE{extra}, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in SPEC_KEYS:
            hint = difflib.get_close_matches(key, list(SPEC_KEYS), 1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(SPEC_KEYS)})"
            raise WsssBenchError(f"unknown key {key!r} in {label}{extra}")
        out[key] = _typed(key, value, label)
    return out


def parse_spec(defaults: dict[str, Any] | None, table: Any, where: str) -> ChainSpec | None:
    """The ``train_seg`` of one ``[[run]]``: its own table merged over the suite's top-level one
    (``defaults``, already checked by :func:`check_table`).

    ``table`` ``false`` means no segmenter for this run; so does no table at either level. ``where``
    names the suite file and the run table (``suite.toml [[run]] #2``) for the errors.
    """
    here = f"{where} {SUITE_KEY}"
    if table is False:
        return None
    if table is None and defaults is None:
        return None
    merged = {**(defaults or {}), **(check_table(table, here, or_false=True) if table is not None else {})}
    if "recipe" not in merged and "segmenter" not in merged:
        raise WsssBenchError(f"{here} needs a recipe (e.g. recipe = \"deeplabv2-voc\") or a segmenter")
    return ChainSpec(merged, here)


def default_out(run: Any) -> str:
    return str(Path(run.out) / "train-seg" / run.run_name())


def chain_config(run: Any, spec: ChainSpec) -> TrainConfig:
    """The training job that follows pseudo-label run ``run`` (a :class:`RunConfig`)."""
    recipe = spec.get("recipe") or f"{spec.get('segmenter')}-{run.dataset}"
    return TrainConfig(
        pseudo_dir=str(run.save_pseudo), data_root=str(run.data_root), out=spec.get("out") or default_out(run),
        dataset=run.dataset, split=run.split, val_split=spec.get("val_split", "val"), recipe=recipe,
        segmenter=spec.get("segmenter"), init=spec.get("init"), seed=spec.get("seed", 0),
        device=spec.get("device", run.device), precision=spec.get("precision", run.precision),
        workers=spec.get("workers", run.workers), name=spec.get("name"), settings=spec.get("settings"),
        iterations=spec.get("iterations"), micro_batch=spec.get("micro_batch"),
        checkpoint_every=spec.get("checkpoint_every"), eval_batch_size=spec.get("eval_batch_size", 1),
        fresh=spec.get("fresh", False), dataset_options=dict(run.dataset_options), record_dir=str(run.out))


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or inside it."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_chain(run: Any, spec: ChainSpec, check_init: bool = True) -> TrainConfig:
    """Everything about a chained training that can be checked before the pseudo-label run; writes
    nothing. Returns its :class:`TrainConfig`. Every error names the suite file and the run table."""
    try:
        return _check_chain(run, spec, check_init)
    except WsssBenchError as e:
        if e.message.startswith(spec.where):
            raise
        raise WsssBenchError(f"{spec.where}: {e.message}", e.path) from None


def _check_chain(run: Any, spec: ChainSpec, check_init: bool) -> TrainConfig:
    from wsss_bench.data import build_dataset
    from wsss_bench.inference.device import check_precision, resolve_device
    from wsss_bench.inference.runner import check_output_folder

    where = spec.where
    if run.stage != "pseudo":
        raise WsssBenchError(f"{where}: a segmenter trains on pseudo labels; this run is stage {run.stage!r}")
    if not run.save_pseudo:
        raise WsssBenchError(f"{where} needs save_pseudo = \"DIR\" in its [[run]] (the pseudo labels it trains on)")
    if run.limit is not None:
        raise WsssBenchError(f"{where}: the run has limit = {run.limit}, so its pseudo labels would not cover the "
                             f"split {run.split!r} the segmenter trains on; drop the limit")
    cfg = chain_config(run, spec)
    recipe = resolve_recipe(cfg)
    check_precision(cfg.precision, resolve_device(cfg.device))
    if cfg.settings is not None and cfg.settings not in ("native", "standard", "native+crf", "standard+crf"):
        raise WsssBenchError(f"{where}: settings must be native, standard, native+crf or standard+crf, "
                             f"got {cfg.settings!r}")
    if recipe.init == "required" and cfg.init is None:
        raise WsssBenchError(f"{where}: recipe {recipe.name!r} starts from ImageNet weights: give init = \"FILE\" "
                             f"(a torchvision or timm {recipe.backbone} state dict; nothing is downloaded)")
    out, pseudo = Path(cfg.out), Path(cfg.pseudo_dir)
    if _inside(out, pseudo) or _inside(pseudo, out):
        raise WsssBenchError(f"{where}: out ({out}) and the run's save_pseudo ({pseudo}) must not contain each other")
    check_output_folder(out, f"{where} out")
    conf = out / CONFIG_NAME
    if out.is_dir() and any(out.iterdir()) and not cfg.fresh:
        try:
            ok = json.loads(conf.read_text(encoding="utf-8")).get("format") == CONFIG_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise WsssBenchError(f"{where}: out is a non-empty folder that holds no wsss-bench training run; "
                                 "use another folder", out)
    val = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, **cfg.dataset_options)
    if not val.has_masks():
        raise WsssBenchError(f"{where}: split {cfg.val_split!r} has no ground truth to score the segmenter on",
                             val.root)
    if recipe.datasets and cfg.dataset not in recipe.datasets:
        raise WsssBenchError(f"{where}: recipe {recipe.name!r} is declared for {', '.join(recipe.datasets)}, "
                             f"not {cfg.dataset}")
    if check_init and cfg.init is not None:
        from wsss_bench.segmenters.registry import create_segmenter
        from wsss_bench.training.init import load_init

        if not Path(cfg.init).is_file():
            raise WsssBenchError(f"{where}: init file not found", cfg.init)
        seg = create_segmenter(recipe.segmenter, val.classes.num_classes, backbone=recipe.backbone,
                               hparams=recipe.hparams)
        load_init(seg, cfg.init)  # a file of another architecture is a one-line error naming it, now
    return cfg


def check_chains(pairs: list[tuple[Any, ChainSpec | None]], check_init: bool = True) -> list[TrainConfig | None]:
    """:func:`check_chain` for every run of a suite, and that no two trainings share an output folder
    and none trains on pseudo labels another run of the suite overwrites."""
    cfgs: list[TrainConfig | None] = []
    outs: dict[str, str] = {}
    for run, spec in pairs:
        if spec is None:
            cfgs.append(None)
            continue
        cfg = check_chain(run, spec, check_init)
        key = os.path.abspath(cfg.out)
        if key in outs:
            raise WsssBenchError(f"{spec.where}: out {cfg.out} is also the out of {outs[key]}")
        outs[key] = spec.where
        cfgs.append(cfg)
    for (run, spec), cfg in zip(pairs, cfgs, strict=True):
        if cfg is None or spec is None:
            continue
        later = [r for r, _ in pairs if r is not run and r.save_pseudo
                 and os.path.abspath(r.save_pseudo) == os.path.abspath(run.save_pseudo)]
        if later:
            raise WsssBenchError(f"{spec.where}: another run of the suite also writes its pseudo labels to "
                                 f"{run.save_pseudo}")
    return cfgs


__all__ = ["SPEC_KEYS", "SUITE_KEY", "ChainSpec", "chain_config", "check_chain", "check_chains", "check_table",
           "parse_spec"]
