"""What method adapters and segmenters share: entry-point discovery, backbone and
hyper-parameter resolution, and strict checkpoint loading.

Both plug-in kinds are found through an entry-point group (``wsss_bench.methods``,
``wsss_bench.segmenters``); the built-in ones are declared in wsss-bench's own ``pyproject.toml``
the same way a third-party package declares one. A plug-in that fails to import produces a warning
naming it in listings, never a crash.

Importing this module, the two base classes and the built-in adapters costs no torch: listing the
plug-ins (``wsss-bench methods``) reads only class attributes. Networks live in separate modules
(``methods/nets``, ``segmenters/nets``, ``methods/backbones``) that an adapter imports when it
builds its network; the adapter modules re-export their names through :func:`lazy_exports`. A
third-party adapter may import torch at module level: it then costs only its own import.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from wsss_bench.errors import WsssBenchError

if TYPE_CHECKING:
    import torch
    from torch import nn


def lazy_exports(module: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` (PEP 562) for ``module``: each name of ``exports`` (name -> the
    module defining it) is imported on first access and then cached in ``module``.

    ``from wsss_bench.methods.cam import CAMNet`` keeps working although the network class lives in
    :mod:`wsss_bench.methods.nets.cam` and ``import wsss_bench.methods.cam`` imports no torch.
    """

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target), name)
        setattr(sys.modules[module], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module])) | set(exports))

    return __getattr__, __dir__


class Registry:
    """The plug-ins of one entry-point ``group`` that subclass ``base`` (``kind`` names them in messages)."""

    def __init__(self, group: str, base: type, kind: str):
        self.group, self.base, self.kind = group, base, kind

    def entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in sorted(entry_points(group=self.group), key=lambda e: e.name)}

    def names(self) -> list[str]:
        """Declared names (loadable or not), sorted."""
        return list(self.entry_points())

    def _load(self, ep: EntryPoint) -> type:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{ep.value} is not a {self.base.__name__} subclass")
        return cls

    def load(self, name: str) -> type:
        """The class registered as ``name``; unknown or broken -> :class:`WsssBenchError`."""
        eps = self.entry_points()
        if name not in eps:
            raise WsssBenchError(f"unknown {self.kind} {name!r} (installed: {', '.join(eps) or 'none'})")
        try:
            return self._load(eps[name])
        except Exception as e:  # noqa: BLE001 - a plug-in can fail in any way
            raise WsssBenchError(f"{self.kind} plug-in {name!r} ({eps[name].value}) failed to load: "
                                 f"{type(e).__name__}: {e}") from None

    def installed(self) -> dict[str, type]:
        """All loadable plug-ins; each broken one is skipped with a warning naming it."""
        out: dict[str, type] = {}
        for name, ep in self.entry_points().items():
            try:
                out[name] = self._load(ep)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"skipping {self.kind} plug-in {name!r} of {self.group} ({ep.value}): "
                              f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)
        return out


def coerce_like(default: Any, value: Any, what: str) -> Any:
    """Convert ``value`` (often a string from the CLI or a suite file) to the type of ``default``."""
    if default is None or isinstance(default, (list, tuple)) or isinstance(value, type(default)):
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int):
                return bool(value)
            raise ValueError
        return type(default)(value)
    except (TypeError, ValueError):
        raise WsssBenchError(f"{what} must be a {type(default).__name__}, got {value!r}") from None


def resolve_backbone(label: str, backbones: tuple[str, ...], backbone: str | None) -> str | None:
    """``backbone`` checked against the declared ones; ``None`` means the first (the paper's)."""
    if backbone is None and backbones:
        backbone = backbones[0]
    if backbones and backbone not in backbones:
        raise WsssBenchError(f"{label} has no backbone {backbone!r} (choose from {', '.join(backbones)})")
    return backbone


def resolve_hparams(label: str, defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults with ``overrides`` applied; an unknown key or a value of the wrong type is an error."""
    hp = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise WsssBenchError(f"{label} has no hyper-parameter {key!r} (known: {', '.join(sorted(hp)) or 'none'})")
        hp[key] = coerce_like(hp[key], value, f"{label} hyper-parameter {key!r}")
    return hp


def load_checkpoint_strict(model: nn.Module, path: str, filter_fn: Callable[[dict[str, torch.Tensor]], dict],
                           label: str) -> str:
    """Load ``path`` (safetensors / ``torch.load(weights_only=True)``), map its keys with ``filter_fn``
    and load strictly into ``model``; returns the file's SHA-256."""
    from wsss_bench.io import load_state_dict, sha256_file

    state = load_state_dict(path)
    try:
        state = filter_fn(state)
    except WsssBenchError as e:
        raise WsssBenchError(e.message, path) from None
    load_strict(model, state, path, method=label)
    check_finite(state, path)
    return sha256_file(path)


def check_finite(state: dict[str, Any], path: Any) -> None:
    """Refuse a checkpoint whose floating-point tensors hold NaN or infinity (a diverged training
    run): its maps would be silently turned into zeros further down."""
    import torch

    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 6} more)" if len(bad) > 6 else ""
        raise WsssBenchError(f"checkpoint has NaN or infinite values in {', '.join(bad[:6])}{more}", path)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Any, method: str = "") -> None:
    """``load_state_dict(strict=True)`` with a one-line error listing missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def short(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {short(shapes)}")
        who = f"checkpoint does not match {method}" if method else "checkpoint does not match the model"
        raise WsssBenchError(f"{who}: " + "; ".join(parts), path)
    model.load_state_dict(state, strict=True)
