"""ImageNet initial weights from a local file onto a segmenter's backbone (nothing downloads).

Accepted layouts (detected from the key names; ``module.`` prefixes are stripped):

- **torchvision / timm ResNet** (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4``, ``fc``): the
  files ``torchvision.models.resnet101(...).state_dict()`` and ``timm.create_model("resnet101")``
  save (timm's plain ResNets use torchvision's names). ``fc`` (the ImageNet classifier) is dropped.
- **the segmenter's own layout**: a DeepLab-v2 ``base.layer1.conv1.conv`` ... checkpoint (the
  reference re-implementation's converted caffemodels), or a DeepLab-v3+ ``backbone.*`` checkpoint;
  the head (``aspp``/``classifier``) is dropped, as the reference loads its init with the ASPP skipped.

Mapping torchvision names onto DeepLab-v2's MSRA layout (:func:`torchvision_to_deeplabv2`):
``conv1``/``bn1`` -> ``layer1.conv1.{conv,bn}``; ``layer{i}.{j}`` -> ``layer{i+1}.block{j+1}``;
``conv1/bn1`` -> ``reduce``, ``conv2/bn2`` -> ``conv3x3``, ``conv3/bn3`` -> ``increase``,
``downsample.{0,1}`` -> ``shortcut.{conv,bn}``. Two things differ between the two networks and are
handled as follows:

- *Input convention.* DeepLab-v2 takes BGR images minus the Caffe mean, in 0..255 units; torchvision
  weights expect RGB ``(x / 255 - mean) / std``. Since ``conv1`` is linear without bias, the first
  convolution is converted exactly: its input channels are reversed and divided by ``255 std``, and
  the constant offset left by the two means (``conv1`` applied to ``(caffe_mean / 255 - mean) / std``,
  summed over the kernel) is moved into ``bn1``'s running mean. The stem's output is then the same as
  torchvision's on the same image, except within 3 pixels of the border, where zero padding meets a
  different constant (tested).
- *Stride placement.* torchvision's bottleneck (ResNet v1.5) puts a stage's stride on the 3x3
  convolution, MSRA's on the first 1x1 (``reduce``); the weights have the same shapes and are loaded
  as they are, which is what WSSS code bases that start DeepLab-v2 from torchvision weights do.

The backbone must match exactly (every key present, no unexpected key, every shape equal); anything
else is a one-line :class:`WsssBenchError` naming the file (a ResNet-50 file for a ResNet-101, a ViT).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import load_state_dict, sha256_file
from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD
from wsss_bench.plugins import load_strict
from wsss_bench.segmenters.base import Segmenter
from wsss_bench.segmenters.deeplab import CAFFE_MEAN_BGR, strip_prefix
from wsss_bench.training.recipes import HEAD_PREFIXES

_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_TV_PARTS = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv", "bn2": "conv3x3.bn",
             "conv3": "increase.conv", "bn3": "increase.bn", "downsample.0": "shortcut.conv",
             "downsample.1": "shortcut.bn"}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``torchvision`` (also timm's ResNets), ``deeplabv2`` or ``deeplabv3plus``; ``unknown`` otherwise."""
    keys = set(state)
    if "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys):
        return "torchvision"
    if "layer1.conv1.conv.weight" in keys:
        return "deeplabv2"
    if "backbone.conv1.weight" in keys and any(k.startswith("backbone.layer1.0.") for k in keys):
        return "deeplabv3plus"
    return "unknown"


def torchvision_to_deeplabv2(state: dict[str, torch.Tensor], convert_input: bool = True) -> dict[str, torch.Tensor]:
    """Rename a torchvision/timm ResNet state dict to DeepLab-v2's MSRA names (``fc`` dropped) and,
    with ``convert_input``, fold the change of input convention into ``conv1`` and ``bn1`` (pure)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key.startswith("conv1.") or key.startswith("bn1."):
            head, _, rest = key.partition(".")
            out[f"layer1.conv1.{'conv' if head == 'conv1' else 'bn'}.{rest}"] = value
            continue
        m = _TV_BLOCK.match(key)
        if m is None:
            out[key] = value  # left for the strict check to report as unexpected
            continue
        stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        for src, dst in _TV_PARTS.items():
            if rest.startswith(src + "."):
                rest = dst + rest[len(src):]
                break
        out[f"layer{stage + 1}.block{block + 1}.{rest}"] = value
    if convert_input and "layer1.conv1.conv.weight" in out and "layer1.conv1.bn.running_mean" in out:
        w, rm = fold_input_convention(out["layer1.conv1.conv.weight"], out["layer1.conv1.bn.running_mean"])
        out["layer1.conv1.conv.weight"], out["layer1.conv1.bn.running_mean"] = w, rm
    return out


def fold_input_convention(weight: torch.Tensor, running_mean: torch.Tensor,
                          mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                          caffe_mean_bgr: tuple[float, ...] = CAFFE_MEAN_BGR) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv1`` weights [O, 3, k, k] for RGB ``(x/255 - mean)/std`` inputs -> weights for BGR
    ``x - caffe_mean`` inputs, and ``bn1``'s running mean shifted by the constant the means leave.

    With ``x_rgb = flip(x_bgr_centred) + caffe_mean_rgb``: ``(x_rgb/255 - mean)/std =
    flip(x_bgr_centred) / (255 std) + (caffe_mean_rgb/255 - mean)/std``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WsssBenchError(f"conv1 weight must be [O, 3, k, k], got {tuple(weight.shape)}")
    w = weight.double()
    std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    cm_rgb = torch.tensor(tuple(reversed(caffe_mean_bgr)), dtype=torch.float64).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    offset = (cm_rgb / 255.0 - mean_t) / std_t                      # per RGB channel
    const = (w * offset).sum(dim=(1, 2, 3))                          # conv1 of the constant image
    new_w = (w / (255.0 * std_t)).flip(1)                            # RGB -> BGR input channels
    return new_w.to(weight.dtype), (running_mean.double() - const).to(running_mean.dtype)


def backbone_view(net: nn.Module, head_prefixes: tuple[str, ...]) -> nn.Module:
    """A module sharing ``net``'s non-head children, so that its state dict is the backbone's."""
    heads = {p.rstrip(".") for p in head_prefixes}
    return nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n not in heads))


def _fill_counters(state: dict[str, torch.Tensor], view: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key, buf in view.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in out \
                and key[: -len("num_batches_tracked")] + "running_mean" in out:
            out[key] = torch.zeros_like(buf)
    return out


def map_init_state(state: dict[str, torch.Tensor], segmenter: str, path: Any = None) -> tuple[dict[str, torch.Tensor], str]:
    """Map an initial-weights state dict onto ``segmenter``'s backbone names; returns (state, layout)."""
    state = strip_prefix(state, ("module.",))
    layout = detect_layout(state)
    if layout == "unknown":
        state = strip_prefix(state, ("base.",))
        layout = detect_layout(state)
    if layout == "unknown":
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        raise WsssBenchError(f"not a ResNet checkpoint in the torchvision/timm layout or the {segmenter} layout "
                             f"(keys such as {sample})", path)
    if segmenter == "deeplabv2":
        if layout == "torchvision":
            return torchvision_to_deeplabv2(state), layout
        if layout == "deeplabv2":
            return {k: v for k, v in state.items() if not k.startswith("aspp.")}, layout
    if segmenter == "deeplabv3plus":
        if layout == "torchvision":
            return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}, layout
        if layout == "deeplabv3plus":
            return {k: v for k, v in state.items() if not k.startswith("classifier.")}, layout
    raise WsssBenchError(f"a {layout}-layout checkpoint cannot initialise segmenter {segmenter!r}", path)


def load_init(seg: Segmenter, path: str) -> dict[str, Any]:
    """Load ImageNet initial weights from ``path`` onto ``seg``'s backbone (strictly); the head keeps
    its initialisation. Returns ``{"path", "sha256", "layout"}``."""
    if seg.model is None:
        seg.build()
    prefixes = HEAD_PREFIXES.get(seg.name)
    if prefixes is None:
        raise WsssBenchError(f"segmenter {seg.name!r} has no known backbone/head split for initial weights")
    raw = load_state_dict(path)
    state, layout = map_init_state(raw, seg.name, path)
    view = backbone_view(seg.model, prefixes)
    state = _fill_counters(state, view)
    load_strict(view, state, path, method=f"the {seg.name} {seg.backbone} backbone (initial weights, {layout} layout)")
    return {"path": str(path), "sha256": sha256_file(path), "layout": layout}


def init_head(net: nn.Module, head_prefixes: tuple[str, ...], rule: str) -> None:
    """Initialise the head's modules: ``normal-0.01`` (DeepLab-v2's ASPP: weights N(0, 0.01), zero
    biases), ``kaiming-normal`` (VainF's ``_init_weight``: He-normal convolutions, norm weight 1 and
    bias 0) or ``default`` (PyTorch's). Uses the global torch generator (seeded by the caller)."""
    if rule == "default":
        return
    for name, m in net.named_modules():
        if not (name + ".").startswith(head_prefixes):
            continue
        if isinstance(m, nn.Conv2d):
            if rule == "normal-0.01":
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and rule == "kaiming-normal":
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)
