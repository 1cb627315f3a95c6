"""Plain vision transformers built from timm without downloading, and attention capture.

Shared by the transformer adapters (GETAM, AD-CAM) and GETAM's DPT segmenter:

- :func:`build_vit`: a timm ``VisionTransformer`` of any of the sizes in :data:`VIT_SPECS`
  (``pretrained=False`` always, ``num_classes=0`` so that no ImageNet head is built). Parameter
  names are timm's, which are also the timm-0.4 names of the checkpoints of GETAM
  (weixuansun/GETAM ``models/vision_transformer.py``, ``models/vision_transformer_hybrid.py``):
  ``cls_token``, ``pos_embed``, ``dist_token`` (distilled DeiT), ``patch_embed.proj.*`` (and
  ``patch_embed.backbone.*`` for the R50 hybrid), ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,
  mlp.fc1,mlp.fc2}.*``, ``norm.*``.
- :func:`vit_forward`: the token forward pass at any input size, with the patch position
  embedding resized to the input grid (:func:`resize_pos_embed`: bilinear as in GETAM's
  ``_resize_pos_embed`` in ``models/vision_transformer.py``, or bicubic), returning the outputs of
  any blocks (before the final norm) and the final normed tokens.
- :class:`AttentionCapture`: a context manager that records each chosen block's softmax attention
  [B, heads, N, N] (and, with ``grad=True``, its gradient) through hooks on timm's own attention
  modules; the hooks are removed and the modules restored on exit, whatever happens.

No fork of timm: the forward pass calls timm's modules (patch embedding, blocks, norm); two pieces are
our own because GETAM's bundled timm 0.4 differs from timm 1.x:

- the position-embedding resize (GETAM's layout resizes bilinearly while timm's dynamic size is bicubic);
- the weight standardisation of the hybrids' ResNet-V2 trunk (:class:`StdConv2dTimm04`): GETAM's
  ``models/layers/std_conv.py`` computes ``(w - mean) / (std + 1e-5)`` with the biased std over each
  output filter, timm 1.x ``(w - mean) / sqrt(var + 1e-8)``. :func:`build_vit` swaps every
  weight-standardised convolution of a hybrid (``vit_hybrid``, ``vit_hybrid_demo``) for the timm-0.4
  formula, keeping its TF-style "SAME" padding, parameters and names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError

if TYPE_CHECKING:  # timm is imported by the functions that build networks
    from timm.models.vision_transformer import VisionTransformer


@dataclass(frozen=True)
class ViTSpec:
    """One buildable ViT size: a timm factory name plus overrides (all offline)."""

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


#: Built-in sizes. The ``*_base*`` and hybrid specs are the 384 x 384 models GETAM's DPT builds
#: (``vit_base_patch16_384``, ``vit_deit_base_patch16_384``, ``vit_deit_base_distilled_patch16_384``,
#: ``vit_base_resnet50_384`` in timm 0.4), so their ``pos_embed`` has 24 x 24 + prefix rows.
#: ``vit_tiny_demo`` is the demo/test size (4 blocks, dim 64, 2 heads, patch 16); ``vit_hybrid_demo``
#: the demo's small hybrid (a two-stage ResNet-V2 trunk of stride 8 under the same 4 blocks).
VIT_SPECS: dict[str, ViTSpec] = {
    "vit_base": ViTSpec("vit_base_patch16_384", {}, "ViT-B/16 at 384 (12 blocks, dim 768, 12 heads)"),
    "deit_base": ViTSpec("deit_base_patch16_384", {}, "DeiT-B/16 at 384"),
    "deit_base_distilled": ViTSpec("deit_base_distilled_patch16_384", {},
                                   "DeiT-B/16 distilled at 384 (class and distillation tokens)"),
    "vit_hybrid": ViTSpec("vit_base_r50_s16_384", {}, "R50 + ViT-B/16 hybrid at 384"),
    "vit_small": ViTSpec("vit_small_patch16_224", {}, "ViT-S/16 at 224 (12 blocks, dim 384, 6 heads)"),
    "vit_tiny": ViTSpec("vit_tiny_patch16_224", {}, "ViT-Ti/16 at 224 (12 blocks, dim 192, 3 heads)"),
    "vit_tiny_demo": ViTSpec("vit_tiny_patch16_224", {"embed_dim": 64, "depth": 4, "num_heads": 2},
                             "demo size: 4 blocks, dim 64, 2 heads, patch 16, 224 grid"),
    "vit_hybrid_demo": ViTSpec("hybrid_demo", {"embed_dim": 64, "depth": 4, "num_heads": 2},
                               "demo hybrid: a two-stage ResNet-V2 stem (stride 8) + 4 blocks, dim 64, 2 heads"),
}


#: GETAM's bundled timm 0.4 weight-standardisation epsilon (``StdConv2d``/``StdConv2dSame`` default, which
#: its ``_resnetv2`` does not override).
TIMM04_STD_EPS = 1e-5


class StdConv2dTimm04(nn.Conv2d):
    """A weight-standardised convolution as GETAM's bundled timm 0.4 computes it
    (weixuansun/GETAM ``models/layers/std_conv.py``, ``StdConv2d`` / ``StdConv2dSame``).

    Each output filter is standardised over its ``in x kh x kw`` entries with the *biased* standard
    deviation plus epsilon, ``(w - mean) / (std + eps)`` (timm 1.x: ``(w - mean) / sqrt(var + eps)``
    with eps 1e-8 for the R50 hybrid). ``same_pad``: TensorFlow-style "SAME" padding computed from the
    input size (timm's ``pad_same``: the odd pixel goes to the bottom/right), used where the static
    padding cannot express it (strided layers); otherwise ``padding`` is the static one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = "SAME", dilation: Any = 1, groups: int = 1, bias: bool = False,
                 eps: float = TIMM04_STD_EPS, device: Any = None, dtype: Any = None):
        from timm.layers.padding import get_padding_value

        same_pad = False
        if isinstance(padding, str):
            padding, same_pad = get_padding_value(padding, kernel_size, stride=stride, dilation=dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.same_pad = bool(same_pad)
        self.eps = float(eps)

    @classmethod
    def like(cls, conv: nn.Conv2d, eps: float = TIMM04_STD_EPS) -> StdConv2dTimm04:
        """The same layer (shapes, stride, padding, dilation, groups, the very parameter tensors) with the
        timm-0.4 formula."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  eps=eps, device="meta")
        new.same_pad = bool(getattr(conv, "same_pad", False))
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def standardised_weight(self) -> torch.Tensor:
        std, mean = torch.std_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (self.weight - mean) / (std + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            from timm.layers.padding import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.standardised_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def use_timm04_weight_standardisation(model: nn.Module) -> int:
    """Replace every timm weight-standardised convolution (``StdConv2d``, ``StdConv2dSame``) in ``model``
    by :class:`StdConv2dTimm04` (GETAM's formula); returns how many were replaced."""
    from timm.layers import StdConv2d, StdConv2dSame

    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (StdConv2d, StdConv2dSame)):
                setattr(module, child_name, StdConv2dTimm04.like(child))
                count += 1
    return count


def _build_hybrid_demo(**kwargs: Any) -> VisionTransformer:
    """A small R50+ViT-style hybrid (timm's ``HybridEmbed`` on a ResNet-V2 trunk, as in
    ``vit_base_r50_s16_384``) for the demo: ResNet-V2 with one bottleneck block in each of two stages
    (64 and 128 channels, stride 8, group norm), then the ViT blocks on its 1 x 1 patches."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    trunk = ResNetV2(layers=(1, 1), channels=(64, 128), num_classes=0, global_pool="", stem_chs=32,
                     preact=False, stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8),
                     norm_layer=partial(GroupNormAct, num_groups=8))
    return VisionTransformer(img_size=224, patch_size=1, embed_layer=partial(HybridEmbed, backbone=trunk),
                             **kwargs)


def build_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build the ViT ``name`` of :data:`VIT_SPECS`, randomly initialised, never downloading.

    ``overrides`` go to the timm factory (e.g. ``img_size``); ``num_classes`` is forced to 0 so
    that no classification head exists (adapters drop the checkpoint's ImageNet head). A hybrid's
    ResNet-V2 trunk gets GETAM's timm-0.4 weight standardisation (:class:`StdConv2dTimm04`).
    """
    import timm

    if name not in VIT_SPECS:
        raise WsssBenchError(f"unknown ViT {name!r} (choose from {', '.join(VIT_SPECS)})")
    spec = VIT_SPECS[name]
    kwargs = {**spec.kwargs, **overrides, "num_classes": 0}
    if spec.timm_name == "hybrid_demo":
        model = _build_hybrid_demo(**kwargs)
    else:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if getattr(model.patch_embed, "backbone", None) is not None:  # a hybrid: GETAM's timm-0.4 formula
        use_timm04_weight_standardisation(model.patch_embed.backbone)
    model.eval()
    return model


def num_prefix_tokens(vit: VisionTransformer) -> int:
    """Leading non-patch tokens: 1 (class), 2 (class + distillation) or more (register tokens)."""
    return int(vit.num_prefix_tokens)


def embed_dim(vit: VisionTransformer) -> int:
    return int(vit.embed_dim)


def depth(vit: VisionTransformer) -> int:
    return len(vit.blocks)


def resize_pos_embed(pos_embed: torch.Tensor, num_prefix: int, grid: tuple[int, int],
                     mode: str = "bicubic", old_grid: tuple[int, int] | None = None,
                     antialias: bool = False) -> torch.Tensor:
    """Resize the patch part of a position embedding [1, num_prefix + P, D] to ``grid``.

    The prefix rows are kept; the patch rows (a square grid unless ``old_grid`` says otherwise) are
    interpolated with ``F.interpolate(mode, align_corners=False)``. ``mode="bilinear"`` is GETAM's
    ``_resize_pos_embed`` (``F.interpolate(..., mode="bilinear")``); ``"bicubic"`` the usual timm one.
    """
    if mode not in ("bilinear", "bicubic"):
        raise WsssBenchError(f"position-embedding resize mode must be bilinear or bicubic, got {mode!r}")
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n = patches.shape[1]
    if old_grid is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise WsssBenchError(f"position embedding has {n} patch rows, not a square grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(grid):
        return pos_embed
    d = patches.shape[-1]
    patches = patches.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=tuple(grid), mode=mode, align_corners=False,
                            antialias=antialias).to(pos_embed.dtype)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)
    return torch.cat([prefix, patches], dim=1)


def patch_tokens(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch embedding of ``x`` [B, 3, h, w] at any size: tokens [B, P, D] and the grid (gh, gw).

    Calls the modules of timm's ``PatchEmbed`` / ``HybridEmbed`` (``backbone`` then ``proj``) directly
    so that no fixed image size is asserted; the grid is that of the actual feature map.
    """
    pe = vit.patch_embed
    if getattr(pe, "backbone", None) is not None:
        x = pe.backbone(x)
        if isinstance(x, (list, tuple)):
            x = x[-1]
    x = pe.proj(x)
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = x.flatten(2).transpose(1, 2)
    norm = getattr(pe, "norm", None)
    if norm is not None:
        x = norm(x)
    return x, grid


def prefix_tokens(vit: VisionTransformer, batch: int) -> list[torch.Tensor]:
    """The learnable leading tokens in timm's order: class, distillation, register tokens."""
    out = []
    for attr in ("cls_token", "dist_token", "reg_token"):
        tok = getattr(vit, attr, None)
        if isinstance(tok, torch.Tensor):
            out.append(tok.expand(batch, -1, -1))
    return out


@dataclass
class ViTOutput:
    """Tokens of one forward pass: ``blocks[i]`` is block i's output (before the final norm)."""

    blocks: dict[int, torch.Tensor]
    normed: torch.Tensor | None
    grid: tuple[int, int]
    num_prefix: int


def block_index(index: int, depth: int) -> int:
    """``index`` of a block of a ``depth``-block ViT as 0..depth-1 (negative counts from the end)."""
    resolved = index + depth if index < 0 else index
    if not 0 <= resolved < depth:
        raise WsssBenchError(f"block index {resolved} out of range for a {depth}-block ViT")
    return resolved


def vit_forward(vit: VisionTransformer, x: torch.Tensor, pos_mode: str = "bicubic",
                keep_blocks: Iterable[int] = (), final_norm: bool = True) -> ViTOutput:
    """Run ``vit`` on ``x`` [B, 3, h, w] of any size (position embedding resized to the grid).

    Returns the outputs of the blocks in ``keep_blocks`` (negative indices count from the end) and,
    with ``final_norm``, the final normed tokens [B, prefix + P, D].
    """
    n_blocks = len(vit.blocks)
    keep = {block_index(i, n_blocks) for i in keep_blocks}
    tokens, grid = patch_tokens(vit, x)
    n_prefix = num_prefix_tokens(vit)
    if vit.pos_embed is None:
        raise WsssBenchError("ViT without an absolute position embedding is not supported")
    if getattr(vit, "no_embed_class", False):
        raise WsssBenchError("ViTs whose position embedding excludes the class token are not supported")
    pos = resize_pos_embed(vit.pos_embed, n_prefix, grid, mode=pos_mode)
    tokens = torch.cat(prefix_tokens(vit, tokens.shape[0]) + [tokens], dim=1) + pos
    tokens = vit.pos_drop(tokens)
    tokens = vit.norm_pre(tokens)
    kept: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(vit.blocks):
        tokens = blk(tokens)
        if i in keep:
            kept[i] = tokens
    normed = vit.norm(tokens) if final_norm else None
    return ViTOutput(blocks=kept, normed=normed, grid=grid, num_prefix=n_prefix)


class AttentionCapture:
    """Context manager recording the softmax attention of chosen ViT blocks (and its gradient).

    ``with AttentionCapture(vit, blocks=[6, 7], grad=True) as cap: ...`` switches the chosen timm
    ``Attention`` modules to their explicit (non-fused) path, whose ``attn_drop`` receives the
    softmax attention; a forward hook on ``attn_drop`` stores its output (the attention used
    downstream, [B, heads, N, N]) in ``cap.attentions[i]`` and, with ``grad=True`` and a graph,
    registers a tensor hook that stores the gradient of that tensor in ``cap.gradients[i]`` when a
    backward pass reaches it. On exit every hook is removed and ``fused_attn`` restored; the stored
    tensors live as long as the capture object (call :meth:`clear` to drop them early).

    ``blocks``: indices into ``vit.blocks`` (negative ones count from the end), ``None`` = all.
    """

    def __init__(self, vit: nn.Module, blocks: Iterable[int] | None = None, grad: bool = False):
        n = len(vit.blocks)
        idx = list(range(n)) if blocks is None else [(i + n) if i < 0 else int(i) for i in blocks]
        for i in idx:
            if not 0 <= i < n:
                raise WsssBenchError(f"attention block {i} out of range for a {n}-block ViT")
            attn = vit.blocks[i].attn
            if not (hasattr(attn, "attn_drop") and hasattr(attn, "fused_attn")):
                raise WsssBenchError(f"block {i} has no timm Attention module to capture")
        self.vit = vit
        self.block_indices = sorted(set(idx))
        self.grad = grad
        self.attentions: dict[int, torch.Tensor] = {}
        self.gradients: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._fused: dict[int, bool] = {}

    def _forward_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.attentions[index] = output
            if self.grad and output.requires_grad:
                def save_grad(g: torch.Tensor) -> None:
                    self.gradients[index] = g
                output.register_hook(save_grad)
        return hook

    def __enter__(self) -> AttentionCapture:
        try:
            for i in self.block_indices:
                attn = self.vit.blocks[i].attn
                self._fused[i] = bool(attn.fused_attn)
                attn.fused_attn = False
                self._handles.append(attn.attn_drop.register_forward_hook(self._forward_hook(i)))
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release()

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i, fused in self._fused.items():
            self.vit.blocks[i].attn.fused_attn = fused
        self._fused.clear()

    def clear(self) -> None:
        self.attentions.clear()
        self.gradients.clear()

    def attention_list(self) -> list[torch.Tensor]:
        """Captured attentions in block order (raises if a chosen block did not run)."""
        missing = [i for i in self.block_indices if i not in self.attentions]
        if missing:
            raise WsssBenchError(f"no attention captured for block(s) {missing}")
        return [self.attentions[i] for i in self.block_indices]


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, P, D] -> feature map [B, D, gh, gw] (row-major patch order, as timm)."""
    b, p, d = tokens.shape
    if p != grid[0] * grid[1]:
        raise WsssBenchError(f"{p} patch tokens do not fill a {grid[0]} x {grid[1]} grid")
    return tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])
