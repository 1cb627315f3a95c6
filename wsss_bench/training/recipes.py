"""Training recipes: declared, versioned data (one TOML file per recipe), each citing its source.

A recipe fixes everything that decides the trained segmenter except the pseudo labels, the seed
and the initial weights: the segmenter and its size, crop, scales, flip, global batch and
micro-batch, iterations, the optimiser and its parameter groups, the learning-rate schedule, the
loss, batch-norm handling, the head's initialisation and the test-time protocol. The packaged
recipes live in ``wsss_bench/training/recipes/<name>.toml``; a path to any ``.toml`` file of the
same schema works too. Every training record names the recipe, its version and the SHA-256 of the
file, so two final mIoUs can be compared only when they come from the same recipe.

Schema (every key is checked; an unknown one is an error naming it)::

    name, version, description, segmenter, backbone, datasets, init ("required" | "optional"),
    head_init ("normal-0.01" | "kaiming-normal" | "default"),
    init_file (packaged initial weights in ``wsss_bench/demo/weights/``, used when no --init is given)
    [hparams]        segmenter hyper-parameters (e.g. width, blocks for the tiny network)
    [source]         repo, commit, files, notes: where the numbers come from
    [schedule]       iterations, batch (global), micro_batch (samples per forward pass), checkpoint_every
    [augment]        crop, scales, scale_sampling ("choice" | "uniform"), flip
    [loss]           type ("ce" | "msc"), msc_scales
    [optimizer]      type ("sgd" | "adamw"), lr, momentum, nesterov (SGD), betas (AdamW), weight_decay,
                     bn ("frozen" | "train"), backbone_bn_momentum,
                     [[optimizer.groups]] part/module/kind selectors with lr_mult and weight_decay
    [lr_schedule]    type ("poly"), power, step, min_lr
    [test]           settings (test-time protocol: "standard", "native", ...)

Pure functions here: :func:`lr_at` (the schedule) and :func:`build_param_groups` (which parameter
trains with which learning rate); tests pin both against the reference code's formulas.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from wsss_bench.errors import WsssBenchError

RECIPE_PACKAGE = "wsss_bench.training"
#: Parameter-name prefixes of each trainable segmenter's head (the rest is the backbone).
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {"deeplabv2": ("aspp.",), "deeplabv3plus": ("classifier.",)}
NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class GroupSpec:
    """One optimiser parameter group: the parameters matching all three selectors.

    ``part``: ``backbone`` | ``head`` | ``any``; ``module``: the owning module's type, ``conv``
    (``nn.Conv2d``), ``norm`` (batch/group/layer norm) or ``any``; ``kind``: ``weight`` | ``bias`` |
    ``any``. ``lr_mult`` multiplies the recipe's ``lr``; ``weight_decay`` (``None``: the optimizer's).
    A parameter goes to the first group it matches; a parameter no group matches is not trained.
    """

    part: str = "any"
    module: str = "any"
    kind: str = "any"
    lr_mult: float = 1.0
    weight_decay: float | None = None
    comment: str = ""

    def matches(self, part: str, module: str, kind: str) -> bool:
        return all(sel in ("any", val) for sel, val in ((self.part, part), (self.module, module), (self.kind, kind)))


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    description: str
    segmenter: str
    backbone: str | None
    hparams: dict[str, Any]
    datasets: tuple[str, ...]
    init: str
    head_init: str
    source: dict[str, Any]
    iterations: int
    batch: int
    micro_batch: int
    checkpoint_every: int
    crop: int
    scales: tuple[float, ...]
    scale_sampling: str
    flip: bool
    pad: str
    loss: str
    msc_scales: tuple[float, ...]
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    betas: tuple[float, float]
    bn: str
    backbone_bn_momentum: float | None
    groups: tuple[GroupSpec, ...]
    lr_power: float
    lr_step: int
    min_lr: float
    test_settings: str
    sha256: str = ""
    path: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    init_file: str | None = None

    def with_overrides(self, **changes: Any) -> Recipe:
        """The recipe with ``changes`` (``None`` values ignored) applied and listed in ``overrides``."""
        changes = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        if not changes:
            return self
        r = dataclasses.replace(self, **changes, overrides={**self.overrides, **changes})
        _check_consistency(r, r.path or r.name)
        return r

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["groups"] = [dataclasses.asdict(g) for g in self.groups]
        for k in ("scales", "msc_scales", "datasets", "betas"):
            d[k] = list(d[k])
        return d


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_TOP = {"name": str, "version": int, "description": str, "segmenter": str, "backbone": str, "datasets": list,
        "init": str, "head_init": str, "init_file": str, "hparams": dict, "source": dict, "schedule": dict, "augment": dict,
        "loss": dict, "optimizer": dict, "lr_schedule": dict, "test": dict}
_TABLES = {
    "source": {"repo": str, "commit": str, "files": list, "notes": str},
    "schedule": {"iterations": int, "batch": int, "micro_batch": int, "checkpoint_every": int},
    "augment": {"crop": int, "scales": list, "scale_sampling": str, "flip": bool, "pad": str},
    "loss": {"type": str, "msc_scales": list},
    "optimizer": {"type": str, "lr": float, "momentum": float, "weight_decay": float, "nesterov": bool,
                  "betas": list,
                  "bn": str, "backbone_bn_momentum": float, "groups": list},
    "lr_schedule": {"type": str, "power": float, "step": int, "min_lr": float},
    "test": {"settings": str},
}
_GROUP = {"part": str, "module": str, "kind": str, "lr_mult": float, "weight_decay": float, "comment": str}
_REQUIRED = ("name", "version", "segmenter", "schedule", "augment", "loss", "optimizer", "lr_schedule", "source")


def _check_keys(table: dict[str, Any], spec: dict[str, type], where: str, path: Path | str) -> None:
    for key, value in table.items():
        if key not in spec:
            hint = difflib.get_close_matches(key, list(spec), 1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(spec)})"
            raise WsssBenchError(f"{where}: unknown key {key!r}{extra}", path)
        want = spec[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise WsssBenchError(f"{where}: {key} must be a {want.__name__}, got {value!r}", path)


def recipes_dir() -> Path:
    return Path(str(resources.files(RECIPE_PACKAGE))) / "recipes"


def recipe_names() -> list[str]:
    """Names of the packaged recipes, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A packaged recipe's file by name, or the given ``.toml`` path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        p = Path(text)
        if not p.is_file():
            raise WsssBenchError("recipe file not found", p)
        return p
    p = recipes_dir() / f"{text}.toml"
    if not p.is_file():
        known = recipe_names()
        hint = difflib.get_close_matches(text, known, 1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise WsssBenchError(f"unknown recipe {text!r}{extra}; packaged recipes: {', '.join(known)}")
    return p


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and check a recipe (a packaged name such as ``deeplabv2-voc`` or a ``.toml`` path)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = recipe_path(name_or_path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise WsssBenchError(f"invalid recipe TOML ({e})", path) from None
    return parse_recipe(data, path, hashlib.sha256(raw).hexdigest())


def parse_recipe(data: dict[str, Any], path: Path | str = "<recipe>", sha256: str = "") -> Recipe:
    _check_keys(data, _TOP, "recipe", path)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise WsssBenchError(f"recipe: missing {', '.join(missing)}", path)
    for table, spec in _TABLES.items():
        _check_keys(data.get(table, {}), spec, f"[{table}]", path)
    sched, aug, loss = data["schedule"], data["augment"], data["loss"]
    opt, lrs, test = data["optimizer"], data["lr_schedule"], data.get("test", {})
    for table, keys in (("schedule", ("iterations", "batch")), ("augment", ("crop", "scales")),
                        ("loss", ("type",)), ("optimizer", ("lr",)), ("lr_schedule", ("type",))):
        lack = [k for k in keys if k not in data[table]]
        if lack:
            raise WsssBenchError(f"[{table}]: missing {', '.join(lack)}", path)
    groups = []
    for i, g in enumerate(opt.get("groups", [])):
        if not isinstance(g, dict):
            raise WsssBenchError(f"[[optimizer.groups]] #{i + 1} must be a table", path)
        _check_keys(g, _GROUP, f"[[optimizer.groups]] #{i + 1}", path)
        groups.append(GroupSpec(**{k: (float(v) if k in ("lr_mult", "weight_decay") else v) for k, v in g.items()}))
    if not groups:
        groups = [GroupSpec()]
    batch = sched["batch"]
    r = Recipe(
        name=data["name"], version=data["version"], description=data.get("description", ""),
        segmenter=data["segmenter"], backbone=data.get("backbone"), hparams=dict(data.get("hparams", {})),
        datasets=tuple(data.get("datasets", [])), init=data.get("init", "optional"),
        head_init=data.get("head_init", "default"), init_file=data.get("init_file"), source=dict(data["source"]),
        iterations=sched["iterations"], batch=batch, micro_batch=sched.get("micro_batch", batch),
        checkpoint_every=sched.get("checkpoint_every", 1000), crop=aug["crop"],
        scales=tuple(float(s) for s in aug["scales"]), scale_sampling=aug.get("scale_sampling", "choice"),
        flip=aug.get("flip", True), pad=aug.get("pad", "bottom-right"), loss=loss["type"], msc_scales=tuple(float(s) for s in loss.get("msc_scales", [])),
        optimizer=opt.get("type", "sgd"), lr=float(opt["lr"]), momentum=float(opt.get("momentum", 0.0)),
        weight_decay=float(opt.get("weight_decay", 0.0)), nesterov=opt.get("nesterov", False),
        betas=tuple(float(b) for b in opt.get("betas", [0.9, 0.999])),
        bn=opt.get("bn", "train"), backbone_bn_momentum=opt.get("backbone_bn_momentum"), groups=tuple(groups), lr_power=float(lrs.get("power", 0.9)),
        lr_step=lrs.get("step", 1), min_lr=float(lrs.get("min_lr", 0.0)),
        test_settings=test.get("settings", "standard"), sha256=sha256, path=str(path),
    )
    if lrs["type"] != "poly":
        raise WsssBenchError(f"[lr_schedule]: type must be 'poly', got {lrs['type']!r}", path)
    _check_consistency(r, path)
    return r


def _check_consistency(r: Recipe, path: Path | str) -> None:
    def bad(msg: str) -> None:
        raise WsssBenchError(f"recipe {r.name}: {msg}", path)

    if r.version < 1:
        bad(f"version must be >= 1, got {r.version}")
    for key in ("iterations", "batch", "micro_batch", "checkpoint_every", "crop", "lr_step"):
        if getattr(r, key) < 1:
            bad(f"{key} must be >= 1, got {getattr(r, key)}")
    if r.batch % r.micro_batch:
        bad(f"batch {r.batch} is not a multiple of micro_batch {r.micro_batch}")
    if not r.scales or any(not math.isfinite(s) or s <= 0 for s in r.scales):
        bad(f"scales must be positive numbers, got {list(r.scales)}")
    if r.scale_sampling not in ("choice", "uniform"):
        bad(f"scale_sampling must be 'choice' or 'uniform', got {r.scale_sampling!r}")
    if r.scale_sampling == "uniform" and len(r.scales) != 2:
        bad(f"scale_sampling 'uniform' needs scales = [low, high], got {list(r.scales)}")
    if r.pad not in ("bottom-right", "centre"):
        bad(f"pad must be 'bottom-right' or 'centre', got {r.pad!r}")
    if r.backbone_bn_momentum is not None and not 0 <= r.backbone_bn_momentum <= 1:
        bad(f"backbone_bn_momentum must be in [0, 1], got {r.backbone_bn_momentum}")
    if r.loss not in ("ce", "msc"):
        bad(f"loss type must be 'ce' or 'msc', got {r.loss!r}")
    if any(not 0 < s < 1 for s in r.msc_scales):
        bad(f"msc_scales must be in (0, 1), got {list(r.msc_scales)}")
    if r.loss == "msc" and not r.msc_scales:
        bad("loss 'msc' needs msc_scales")
    if r.optimizer not in ("sgd", "adamw"):
        bad(f"optimizer type must be 'sgd' or 'adamw', got {r.optimizer!r}")
    if len(r.betas) != 2 or not all(0 <= b < 1 for b in r.betas):
        bad(f"betas must be two numbers in [0, 1), got {list(r.betas)}")
    if r.lr <= 0 or r.momentum < 0 or r.weight_decay < 0 or r.min_lr < 0:
        bad("lr must be > 0; momentum, weight_decay and min_lr >= 0")
    if r.bn not in ("frozen", "train"):
        bad(f"bn must be 'frozen' or 'train', got {r.bn!r}")
    if r.init not in ("required", "optional"):
        bad(f"init must be 'required' or 'optional', got {r.init!r}")
    if r.init_file is not None and (not r.init_file or "/" in r.init_file or "\\" in r.init_file):
        bad(f"init_file must be the name of a file in wsss_bench/demo/weights, got {r.init_file!r}")
    if r.head_init not in ("normal-0.01", "kaiming-normal", "default"):
        bad(f"head_init must be 'normal-0.01', 'kaiming-normal' or 'default', got {r.head_init!r}")
    for g in r.groups:
        if g.part not in ("backbone", "head", "any") or g.module not in ("conv", "norm", "any") \
                or g.kind not in ("weight", "bias", "any"):
            bad(f"optimizer group selectors: part backbone|head|any, module conv|norm|any, kind weight|bias|any; "
                f"got {g.part}/{g.module}/{g.kind}")
        if g.lr_mult < 0 or (g.weight_decay is not None and g.weight_decay < 0):
            bad("optimizer group lr_mult and weight_decay must be >= 0")
    if r.segmenter not in HEAD_PREFIXES:
        bad(f"segmenter {r.segmenter!r} cannot be trained here (trainable: {', '.join(HEAD_PREFIXES)})")
    if not r.source.get("repo"):
        bad("[source] must name the reference implementation (repo)")


# ----------------------------------------------------------------------------------------------
# The schedule and the parameter groups (pure)
# ----------------------------------------------------------------------------------------------


def lr_at(base_lr: float, iteration: int, recipe: Recipe) -> float:
    """Learning rate of (0-based) ``iteration``: ``base * (1 - s floor(i / s) / N) ** power``, at least
    ``min_lr``, where ``s`` is ``lr_step`` (the schedule is updated every ``s`` iterations) and ``N``
    the recipe's iterations. With ``s = 10`` this is kazuto1011/deeplab-pytorch's ``PolynomialLR``
    stepped after every iteration; with ``s = 1`` and ``min_lr`` VainF's ``PolyLR``."""
    n = recipe.iterations
    done = recipe.lr_step * (iteration // recipe.lr_step)
    frac = max(0.0, 1.0 - done / n)
    return max(base_lr * frac ** recipe.lr_power, recipe.min_lr)


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, NORM_TYPES):
        return "norm"
    return "other"


def classify_parameters(net: nn.Module, head_prefixes: tuple[str, ...]) -> list[tuple[str, nn.Parameter, str, str, str]]:
    """``(name, parameter, part, module, kind)`` for every parameter of ``net``, in module order."""
    out = []
    for mod_name, module in net.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            part = "head" if name.startswith(head_prefixes) else "backbone"
            kind = "bias" if p_name == "bias" else "weight"
            out.append((name, p, part, _module_kind(module), kind))
    return out


def build_param_groups(net: nn.Module, recipe: Recipe, head_prefixes: tuple[str, ...]
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """Optimiser parameter groups of ``net`` under ``recipe`` and the names of the frozen parameters.

    Each group dict has ``params``, ``names``, ``lr_mult``, ``lr`` (the base ``lr`` times the
    multiplier), ``initial_lr`` and ``weight_decay``. With ``bn = "frozen"`` the normalisation
    layers' parameters are never trained. Frozen parameters get ``requires_grad = False``.
    """
    groups: list[dict[str, Any]] = [
        {"params": [], "names": [], "lr_mult": g.lr_mult, "lr": recipe.lr * g.lr_mult,
         "initial_lr": recipe.lr * g.lr_mult,
         "weight_decay": recipe.weight_decay if g.weight_decay is None else g.weight_decay}
        for g in recipe.groups]
    frozen: list[str] = []
    for name, p, part, module, kind in classify_parameters(net, head_prefixes):
        target = None
        if not (recipe.bn == "frozen" and module == "norm"):
            target = next((i for i, g in enumerate(recipe.groups) if g.matches(part, module, kind)), None)
        if target is None:
            p.requires_grad_(False)
            frozen.append(name)
        else:
            p.requires_grad_(True)
            groups[target]["params"].append(p)
            groups[target]["names"].append(name)
    return [g for g in groups if g["params"]], frozen
