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
                  pos_mode: str, n_tokens: int = 1, patch: int = 16, eps: float = 1e-6,
                  trunk_groups: int | None = None, grad_from_tokens: bool = False):
    """Step-by-step ViT forward from raw tensors.

    ``trunk_groups``: a hybrid (R50+ViT): the patch features are :func:`reference_resnetv2` of the
    image (group norm with that many groups) followed by the 1 x 1 ``patch_embed.proj``; the token
    grid is the trunk's output grid. ``grad_from_tokens``: the patch tokens become a leaf that
    requires grad, so that attentions get gradients without back-propagating into the embedding.
    Returns ``(last_block_tokens, normed_tokens, attentions, grid)``; each attention [B, H, N, N]
    has ``retain_grad()`` when it requires grad.
    """
    def p(name: str) -> torch.Tensor:
        return sd[prefix + name]

    if trunk_groups is None:
        feat = F.conv2d(x, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch)
    else:
        trunk = reference_resnetv2(sd, prefix + "patch_embed.backbone.", x, trunk_groups)
        feat = F.conv2d(trunk, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"))
    b, d, gh, gw = feat.shape
    tokens = feat.flatten(2).transpose(1, 2)
    if grad_from_tokens:
        tokens = tokens.detach().requires_grad_(True)
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


# -- GETAM's bundled timm 0.4 ResNet-V2 trunk of the R50+ViT hybrid, in plain torch -------------------
# (weixuansun/GETAM ``models/resnetv2.py`` ``ResNetV2(preact=False, stem_type="same")`` with
# ``Bottleneck`` blocks, ``models/layers/std_conv.py`` ``StdConv2dSame``, ``models/layers/padding.py``
# ``pad_same``, ``models/layers/pool2d_same.py`` ``MaxPool2dSame``, ``models/layers/norm_act.py``
# ``GroupNormAct``, read and written again here from scratch)


def tf_same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow "SAME" padding for a k x k window of stride s: total ``max((ceil(n/s)-1)s + k - n, 0)``
    per side, the smaller half on the top/left."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def timm04_standardise(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(w - mean) / (std + eps)`` per output filter, std the population (biased) one."""
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(dim=1)
    std = ((flat - mean[:, None]) ** 2).mean(dim=1).sqrt()
    return (w - mean.view(-1, 1, 1, 1)) / (std.view(-1, 1, 1, 1) + eps)


def reference_resnetv2(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    """The hybrid's trunk: SAME-padded weight-standardised convs, group norm (eps 1e-5) + ReLU, a SAME
    3 x 3 / 2 max pool (padding -inf), then stages of non-pre-activation bottlenecks (stride 1 in the
    first stage, 2 in the others, on the 3 x 3 conv and the 1 x 1 downsample of each stage's first
    block). The structure is read from the state dict's keys."""
    def conv(t: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        w = sd[prefix + name]
        return F.conv2d(tf_same_pad(t, w.shape[-1], stride), timm04_standardise(w), stride=stride)

    def gn(t: torch.Tensor, name: str, relu: bool = True) -> torch.Tensor:
        t = F.group_norm(t, groups, sd[prefix + name + ".weight"], sd[prefix + name + ".bias"], eps=1e-5)
        return F.relu(t) if relu else t

    t = gn(conv(x, "stem.conv.weight", 2), "stem.norm")
    t = F.max_pool2d(tf_same_pad(t, 3, 2, value=float("-inf")), 3, 2)
    stages = sorted({int(k[len(prefix):].split(".")[1]) for k in sd if k.startswith(prefix + "stages.")})
    for s in stages:
        blocks = sorted({int(k[len(prefix):].split(".")[3]) for k in sd if k.startswith(f"{prefix}stages.{s}.")})
        for j in blocks:
            b = f"stages.{s}.blocks.{j}."
            stride = (1 if s == 0 else 2) if j == 0 else 1
            shortcut = t
            if prefix + b + "downsample.conv.weight" in sd:
                shortcut = gn(conv(t, b + "downsample.conv.weight", stride), b + "downsample.norm", relu=False)
            y = gn(conv(t, b + "conv1.weight"), b + "norm1")
            y = gn(conv(y, b + "conv2.weight", stride), b + "norm2")
            y = gn(conv(y, b + "conv3.weight"), b + "norm3", relu=False)
            t = F.relu(y + shortcut)
    return t


def reference_getam(sd: dict[str, torch.Tensor], x: torch.Tensor, classes: list[int], heads: int,
                    start: int, n_tokens: int, trunk_groups: int | None = None) -> torch.Tensor:
    """GETAM one class at a time, as ``train_from_init.py`` + ``generate_cam_2`` do it, in plain torch:
    ``forward_cls`` (blocks before the final norm, ``act_postprocess4``: readout projection with token 0,
    grid, 1 x 1 conv, 3 x 3 stride-2 conv; average pooling; ``cls_head``), then per class the backward
    of its raw logit and ``sum_{l >= start} mean_h relu(G * A) * mean_h relu(G)``, row 0 over the patch
    columns, ReLU, the token grid upsampled to the input size with ``align_corners=True``. Returned
    before ``train_from_init.py``'s division by max + 1e-5. [V, K, h, w]."""
    v, _, h, w = x.shape
    out = torch.zeros(v, len(classes), h, w)
    for vi in range(v):
        last, _, attns, (gh, gw) = reference_vit(sd, "pretrained.model.", x[vi:vi + 1], heads, "bilinear",
                                                 n_tokens, trunk_groups=trunk_groups, grad_from_tokens=True)
        patches = last[:, n_tokens:]
        cat = torch.cat([patches, last[:, :1].expand_as(patches)], dim=-1)
        r = F.gelu(cat @ sd["pretrained.act_postprocess4.0.project.0.weight"].T
                   + sd["pretrained.act_postprocess4.0.project.0.bias"])
        r = r.transpose(1, 2).reshape(1, -1, gh, gw)
        r = F.conv2d(r, sd["pretrained.act_postprocess4.3.weight"], sd["pretrained.act_postprocess4.3.bias"])
        r = F.conv2d(r, sd["pretrained.act_postprocess4.4.weight"], sd["pretrained.act_postprocess4.4.bias"],
                     stride=2, padding=1)
        logits = r.mean(dim=(2, 3)) @ sd["cls_head.weight"].T + sd["cls_head.bias"]
        for ki, c in enumerate(classes):
            for a in attns:
                a.grad = None
            logits[0, c].backward(retain_graph=True)
            total = 0
            for blk in range(start, len(attns)):
                a, g = attns[blk][0].detach(), attns[blk].grad[0]
                per_head = [(g[head] * a[head]).clamp(min=0) for head in range(a.shape[0])]
                total = total + torch.stack(per_head).mean(0) * g.clamp(min=0).mean(0)
            row = torch.relu(total[0, n_tokens:]).reshape(1, 1, gh, gw)
            out[vi, ki] = F.interpolate(row, size=(h, w), mode="bilinear", align_corners=True)[0, 0]
    return out.detach()


# -- comparing a pipeline's output with an official procedure's ------------------------------------------

def compare_with_official(got: torch.Tensor, want: torch.Tensor, got_labels, want_labels,
                          threshold: float, tol: float = 1e-4) -> tuple[float, int]:
    """Maps [K, H, W] (the image's classes) and label images from wsss-bench and from the official
    procedure. Asserts the max difference relative to the official maximum is at most ``tol`` and that
    every differing decision is a float tie: a pixel whose official top score lies within twice the
    largest map difference of ``threshold`` (the foreground/background boundary), or whose two best
    official classes do. Two float32 implementations of the same formula (operations in another order)
    differ in the last bits, so no stricter statement is true in general. Returns (relative difference,
    number of differing decisions)."""
    import numpy as np

    diff = float((got - want).abs().max())
    rel = diff / float(want.abs().max())
    differ = np.asarray(got_labels) != np.asarray(want_labels)
    if differ.any():
        top2 = want.topk(min(2, want.shape[0]), dim=0).values.numpy()
        near_threshold = np.abs(top2[0] - threshold) <= 2 * diff
        near_tie = (top2[0] - top2[-1] <= 2 * diff) if want.shape[0] > 1 else np.zeros_like(differ)
        unexplained = int((differ & ~(near_threshold | near_tie)).sum())
    else:
        unexplained = 0
    assert rel <= tol and unexplained == 0, (
        f"max relative difference {rel:.2e}; {int(differ.sum())} decisions differ, {unexplained} of them "
        f"not float ties")
    return rel, int(differ.sum())
