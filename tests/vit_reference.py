"""A plain-torch ViT forward written step by step, and GETAM's official checkpoint layout as data.

Shared by ``test_vit_backbone.py``, ``test_getam.py`` and ``test_adcam.py`` as the independent
reference: it reads raw tensors from a state dict (no timm, no wsss_bench code) and keeps every
block's softmax attention (with ``retain_grad``) so that tests can apply formulas by hand.

GETAM's layout is written out from weixuansun/GETAM ``DPT/DPT.py`` (``DPT``: ``pretrained``,
``scratch``, ``cam_module``, ``cls_head`` Linear 768 -> 20) and ``DPT/vit.py``
(``_make_vit_b16_backbone``: ``pretrained.model`` = timm-0.4 ``vit_base_patch16_384``,
``act_postprocess1..4`` with ``ProjectReadout`` ``project.0`` Linear 1536 -> 768, features
96/192/384/768).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def vit_layout(prefix: str, dim: int, depth: int, grid: int, patch: int = 16, tokens: int = 1,
               head_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a timm-0.4 ViT state dict (with its ImageNet ``head``) under ``prefix``."""
    hidden = 4 * dim
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, grid * grid + tokens, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    if tokens == 2:
        shapes["dist_token"] = (1, 1, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,),
        })
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,),
                   "head.weight": (head_classes, dim), "head.bias": (head_classes,)})
    if tokens == 2:
        shapes.update({"head_dist.weight": (head_classes, dim), "head_dist.bias": (head_classes,)})
    return {prefix + k: v for k, v in shapes.items()}


def getam_official_layout(num_classes: int = 20, dim: int = 768, depth: int = 12, grid: int = 24,
                          tokens: int = 1) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """GETAM ``DPTSegmentationModel`` keys -> shapes, and the subset the adapter must ignore."""
    shapes = vit_layout("pretrained.model.", dim, depth, grid, tokens=tokens)
    ignored = {k for k in shapes if k.startswith(("pretrained.model.head.", "pretrained.model.head_dist."))}
    shapes.update({
        "pretrained.act_postprocess4.0.project.0.weight": (dim, 2 * dim),
        "pretrained.act_postprocess4.0.project.0.bias": (dim,),
        "pretrained.act_postprocess4.3.weight": (dim, dim, 1, 1),
        "pretrained.act_postprocess4.3.bias": (dim,),
        "pretrained.act_postprocess4.4.weight": (dim, dim, 3, 3),
        "pretrained.act_postprocess4.4.bias": (dim,),
        "cls_head.weight": (num_classes, dim),
        "cls_head.bias": (num_classes,),
    })
    decoder = {  # a few DPT decoder keys (not on the classification path)
        "pretrained.act_postprocess1.0.project.0.weight": (dim, 2 * dim),
        "pretrained.act_postprocess1.3.weight": (96, dim, 1, 1),
        "pretrained.act_postprocess1.4.weight": (96, 96, 4, 4),
        "pretrained.act_postprocess3.3.weight": (384, dim, 1, 1),
        "scratch.layer1_rn.weight": (256, 96, 3, 3),
        "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
        "scratch.output_conv.0.weight": (256, 256, 3, 3),
        "scratch.output_conv.1.running_mean": (256,),
        "cam_module.fc.0.weight": (16, 256),
    }
    shapes.update(decoder)
    return shapes, ignored | set(decoder)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, std: float = 0.05,
                 scale: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Random tensors; LayerNorm-like ``*norm*.weight`` vectors around 1; ``scale`` multiplies keys by suffix."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g) * std
        if "norm" in k.rsplit(".", 2)[-2] and k.endswith(".weight") and len(shape) == 1:
            t = 1.0 + t
        for suffix, factor in (scale or {}).items():
            if k.endswith(suffix):
                t = t * factor
        out[k] = t
    return out


def reference_vit(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, heads: int,
                  pos_mode: str, n_tokens: int = 1, patch: int = 16, eps: float = 1e-6):
    """Step-by-step ViT forward from raw tensors.

    Returns ``(last_block_tokens, normed_tokens, attentions, grid)``; each attention [B, H, N, N]
    has ``retain_grad()`` when it requires grad.
    """
    def p(name: str) -> torch.Tensor:
        return sd[prefix + name]

    feat = F.conv2d(x, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch)
    b, d, gh, gw = feat.shape
    tokens = feat.flatten(2).transpose(1, 2)
    lead = [p("cls_token").expand(b, -1, -1)]
    if n_tokens == 2:
        lead.append(p("dist_token").expand(b, -1, -1))
    pos = p("pos_embed")
    old = int(math.isqrt(pos.shape[1] - n_tokens))
    grid_pos = pos[:, n_tokens:].reshape(1, old, old, d).permute(0, 3, 1, 2)
    if (old, old) != (gh, gw):
        grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode=pos_mode, align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
    t = torch.cat(lead + [tokens], dim=1) + torch.cat([pos[:, :n_tokens], grid_pos], dim=1)
    n = t.shape[1]
    hd = d // heads
    depth = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "blocks.")})
    attentions = []
    for i in range(depth):
        def q(name: str, i: int = i) -> torch.Tensor:
            return p(f"blocks.{i}.{name}")
        h = F.layer_norm(t, (d,), q("norm1.weight"), q("norm1.bias"), eps)
        qkv = (h @ q("attn.qkv.weight").T + q("attn.qkv.bias")).reshape(b, n, 3, heads, hd)
        qq, kk, vv = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        attn = torch.softmax((qq @ kk.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        if attn.requires_grad:
            attn.retain_grad()
        attentions.append(attn)
        o = (attn @ vv).transpose(1, 2).reshape(b, n, d)
        t = t + (o @ q("attn.proj.weight").T + q("attn.proj.bias"))
        h = F.layer_norm(t, (d,), q("norm2.weight"), q("norm2.bias"), eps)
        h = F.gelu(h @ q("mlp.fc1.weight").T + q("mlp.fc1.bias"))
        t = t + (h @ q("mlp.fc2.weight").T + q("mlp.fc2.bias"))
    normed = F.layer_norm(t, (d,), p("norm.weight"), p("norm.bias"), eps)
    return t, normed, attentions, (gh, gw)


def resnetv2_r50_hybrid_layout(prefix: str) -> dict[str, tuple[int, ...]]:
    """Keys -> shapes of timm-0.4 ``vit_base_resnet50_384``'s ``patch_embed.backbone`` (ResNetV2, layers
    3, 4, 9, no pre-activation; GETAM ``models/resnetv2.py``: ``stem.conv``/``stem.norm``, blocks with
    ``downsample.{conv,norm}`` on the first block, ``conv1..3``/``norm1..3``)."""
    shapes: dict[str, tuple[int, ...]] = {"stem.conv.weight": (64, 3, 7, 7), "stem.norm.weight": (64,),
                                          "stem.norm.bias": (64,)}
    in_ch = 64
    for s, (n, mid) in enumerate(((3, 64), (4, 128), (9, 256))):
        out = mid * 4
        for j in range(n):
            b = f"stages.{s}.blocks.{j}."
            if j == 0:
                shapes.update({b + "downsample.conv.weight": (out, in_ch, 1, 1),
                               b + "downsample.norm.weight": (out,), b + "downsample.norm.bias": (out,)})
            shapes.update({b + "conv1.weight": (mid, in_ch if j == 0 else out, 1, 1),
                           b + "norm1.weight": (mid,), b + "norm1.bias": (mid,),
                           b + "conv2.weight": (mid, mid, 3, 3), b + "norm2.weight": (mid,), b + "norm2.bias": (mid,),
                           b + "conv3.weight": (out, mid, 1, 1), b + "norm3.weight": (out,), b + "norm3.bias": (out,)})
        in_ch = out
    return {prefix + k: v for k, v in shapes.items()}
