"""Recipes: the packaged files carry their sources' values; the learning-rate schedule and the
parameter groups equal the reference code's, re-implemented here from its source."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter, DeepLabV3PlusSegmenter
from wsss_bench.training.recipes import (
    HEAD_PREFIXES,
    build_param_groups,
    load_recipe,
    lr_at,
    parse_recipe,
    recipe_names,
    recipes_dir,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TINY2 = {"width": 8, "blocks": [1, 1, 1, 1]}


def test_packaged_recipes_load_and_cite_a_source():
    names = recipe_names()
    assert {"deeplabv2-voc", "deeplabv2-coco", "deeplabv3plus-voc", "tiny-synthetic"} <= set(names)
    for n in names:
        r = load_recipe(n)
        assert r.name == n and r.version >= 1 and len(r.sha256) == 64
        assert r.source["repo"].startswith("https://github.com/") and r.source.get("files")
        assert r.batch % r.micro_batch == 0


def test_deeplabv2_voc_equals_kazuto1011_voc12_config():
    """configs/voc12.yaml + main.py of kazuto1011/deeplab-pytorch at 4219467, value by value."""
    r = load_recipe("deeplabv2-voc")
    assert r.source["commit"] == "4219467fa5de07985f834f1bd8c04c186dc8f6d8"
    assert (r.segmenter, r.backbone, r.crop) == ("deeplabv2", "resnet101", 321)            # IMAGE.SIZE.TRAIN
    assert r.scales == (0.5, 0.75, 1.0, 1.25, 1.5) and r.scale_sampling == "choice"        # DATASET.SCALES
    assert (r.micro_batch, r.batch) == (5, 10)                    # BATCH_SIZE.TRAIN 5 x ITER_SIZE 2
    assert r.iterations == 20000 and r.checkpoint_every == 5000   # ITER_MAX, ITER_SAVE
    assert (r.lr, r.momentum, r.weight_decay) == (2.5e-4, 0.9, 5e-4)
    assert (r.lr_power, r.lr_step, r.min_lr) == (0.9, 10, 0.0)    # POLY_POWER, LR_DECAY
    assert r.bn == "frozen" and r.loss == "msc" and r.msc_scales == (0.75, 0.5) and r.flip
    assert [(g.lr_mult, g.weight_decay) for g in r.groups] == [(1.0, None), (10.0, None), (20.0, 0.0)]
    assert r.init == "required" and r.head_init == "normal-0.01"
    coco = load_recipe("deeplabv2-coco")  # configs/cocostuff164k.yaml: the same solver, ITER_MAX 100000
    assert coco.iterations == 100000 and coco.source["files"][0] == "configs/cocostuff164k.yaml"
    same = ("crop", "scales", "batch", "micro_batch", "lr", "momentum", "weight_decay", "lr_power", "lr_step",
            "bn", "loss", "msc_scales", "groups", "checkpoint_every")
    assert all(getattr(coco, k) == getattr(r, k) for k in same)


def test_deeplabv3plus_voc_equals_vainf_settings():
    r = load_recipe("deeplabv3plus-voc")
    assert (r.crop, r.batch, r.iterations, r.lr, r.weight_decay, r.momentum) == (513, 16, 30000, 0.01, 1e-4, 0.9)
    assert r.scales == (0.5, 2.0) and r.scale_sampling == "uniform" and r.bn == "train"
    assert (r.lr_power, r.lr_step, r.min_lr, r.backbone_bn_momentum) == (0.9, 1, 1e-6, 0.01)
    assert [(g.part, g.lr_mult) for g in r.groups] == [("backbone", 0.1), ("head", 1.0)]
    assert r.hparams == {"output_stride": 16} and r.loss == "ce"


def kazuto_lrs(base: float, iter_max: int, step: int, power: float) -> list[float]:
    """The lr each iteration 1..iter_max trains with under libs/utils/lr_scheduler.py PolynomialLR,
    stepped with ``scheduler.step(epoch=iteration)`` after every iteration (main.py)."""
    lr, out = base, []
    for iteration in range(1, iter_max + 1):
        out.append(lr)
        last_epoch = iteration
        if not (last_epoch == 0 or last_epoch % step != 0 or last_epoch > iter_max):
            lr = base * (1 - float(last_epoch) / iter_max) ** power
    return out


def vainf_lrs(base: float, max_iters: int, power: float, min_lr: float) -> list[float]:
    """utils/scheduler.py PolyLR, stepped after every iteration (main.py): last_epoch = iterations done."""
    return [max(base * (1 - t / max_iters) ** power, min_lr) for t in range(max_iters)]


def test_lr_schedule_equals_the_reference_schedulers():
    r = load_recipe("deeplabv2-voc").with_overrides(iterations=95)
    for mult in (1.0, 10.0, 20.0):
        base = r.lr * mult
        ref = kazuto_lrs(base, 95, 10, 0.9)
        ours = [lr_at(base, i, r) for i in range(95)]
        assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    assert lr_at(r.lr, 9, r) == r.lr and lr_at(r.lr, 10, r) < r.lr   # updated every 10 iterations
    v = load_recipe("deeplabv3plus-voc").with_overrides(iterations=50)
    for base in (0.01, 0.001):
        assert [lr_at(base, i, v) for i in range(50)] == pytest.approx(vainf_lrs(base, 50, 0.9, 1e-6), rel=1e-12)
    assert lr_at(0.001, 49, v) >= 1e-6


def kazuto_get_params(model: nn.Module, key: str):
    """main.py get_params, verbatim in logic: 1x = Conv2d params under 'layer', 10x = ASPP conv
    weights, 20x = ASPP conv biases."""
    for name, m in model.named_modules():
        if key == "1x" and "layer" in name and isinstance(m, nn.Conv2d):
            yield from m.parameters()
        if key == "10x" and "aspp" in name and isinstance(m, nn.Conv2d):
            yield m.weight
        if key == "20x" and "aspp" in name and isinstance(m, nn.Conv2d):
            yield m.bias


def test_deeplabv2_param_groups_equal_reference_get_params():
    r = load_recipe("deeplabv2-voc")
    seg = DeepLabV2Segmenter(21, hparams=TINY2)
    net = seg.build()
    groups, frozen = build_param_groups(net, r, HEAD_PREFIXES["deeplabv2"])
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids == [{id(p) for p in kazuto_get_params(net, k)} for k in ("1x", "10x", "20x")]
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3, 5e-3]
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    bn_params = {n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) for n in (n + ".weight", n + ".bias")}
    assert set(frozen) == bn_params  # the frozen batch norms are not optimised (freeze_bn)
    assert all(not p.requires_grad for n, p in net.named_parameters() if n in bn_params)


def test_deeplabv3plus_param_groups_equal_vainf():
    r = load_recipe("deeplabv3plus-voc")
    net = DeepLabV3PlusSegmenter(21, hparams={"width": 8, "blocks": [1, 1, 1, 1]}).build()
    groups, frozen = build_param_groups(net, r, HEAD_PREFIXES["deeplabv3plus"])
    assert frozen == []
    assert [{id(p) for p in g["params"]} for g in groups] == [
        {id(p) for p in net.backbone.parameters()}, {id(p) for p in net.classifier.parameters()}]
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])


def _raw(name: str = "deeplabv2-voc") -> dict:
    return tomllib.loads((recipes_dir() / f"{name}.toml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["schedule"].update(iteratons=5), "unknown key 'iteratons' (did you mean 'iterations'?)"),
    (lambda d: d.update(segmentr="x"), "unknown key 'segmentr' (did you mean 'segmenter'?)"),
    (lambda d: d["schedule"].update(micro_batch=3), "batch 10 is not a multiple of micro_batch 3"),
    (lambda d: d["optimizer"].update(lr="fast"), "lr must be a float"),
    (lambda d: d.pop("source"), "missing source"),
    (lambda d: d.update(segmenter="more"), "cannot be trained here"),
    (lambda d: d["augment"].update(scale_sampling="uniform"), "needs scales = [low, high]"),
    (lambda d: d["optimizer"]["groups"][0].update(part="neck"), "optimizer group selectors"),
])
def test_bad_recipes_are_one_line_errors_naming_the_file(mutate, message, tmp_path):
    d = _raw()
    mutate(d)
    with pytest.raises(WsssBenchError, match=None) as e:
        parse_recipe(d, tmp_path / "bad.toml")
    assert message in str(e.value) and str(tmp_path / "bad.toml") in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_recipe_name_suggests_the_close_one():
    with pytest.raises(WsssBenchError, match="did you mean 'deeplabv2-voc'"):
        load_recipe("deeplabv2-vc")


def test_overrides_are_recorded_and_checked():
    r = load_recipe("deeplabv2-voc")
    o = r.with_overrides(iterations=7, micro_batch=None)
    assert o.iterations == 7 and o.overrides == {"iterations": 7} and r.overrides == {}
    assert r.with_overrides(iterations=20000) is r  # not a change
    with pytest.raises(WsssBenchError, match="not a multiple of micro_batch 4"):
        r.with_overrides(micro_batch=4)
    assert math.isclose(lr_at(1.0, 6, o), (1 - 0 / 7) ** 0.9)  # step 10 > iterations: constant


def test_param_groups_unmatched_parameters_are_frozen():
    d = _raw("tiny-synthetic")
    d["optimizer"]["groups"] = [{"part": "head", "lr_mult": 1.0}]
    r = parse_recipe(d)
    net = DeepLabV2Segmenter(6, hparams=TINY2).build()
    groups, frozen = build_param_groups(net, r, ("aspp.",))
    assert {n for g in groups for n in g["names"]} == {n for n, _ in net.named_parameters() if n.startswith("aspp.")}
    assert set(frozen) == {n for n, _ in net.named_parameters() if not n.startswith("aspp.")}
    assert torch.is_tensor(groups[0]["params"][0])
