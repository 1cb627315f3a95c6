"""MoRe's official checkpoint layout as data, and its encoder forward written step by step.

Shared by ``test_more.py``, ``test_fidelity_more.py`` and ``test_more_segmenter.py``. Names and shapes are written out from
zwyang6/MoRe ``model/model_mal.py`` (``network``: ``encoder``, ``decoder`` LargeFOV, ``classifier``,
``aux_classifier``, ``graph_layer``), ``model/GCA.py`` (``graphic_cls_aggregation``: ``_fc1.0``,
``head_proj``, ``tail_proj``, ``linear1``, ``linear2``, ``norm``), ``model/decoder/conv_head.py``
(``LargeFOV``: ``conv6``/``conv7`` 3x3 dilation 5 to 512 channels, ``conv8`` 1x1, all without bias) and
``model/backbone/mat_vit.py`` / ``vit.py`` (``MATformer``: ``cls_token`` and ``pos_embed`` over
``num_attri`` tokens plus the 14 x 14 grid, timm block names, a ``head`` Linear over ``num_attri``).
Checkpoints are saved from DistributedDataParallel, hence the ``module.`` prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def official_layout(num_fg: int, dim: int, depth: int, grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a MoRe checkpoint (``module.`` prefix added by the caller)."""
    tokens = 4 + num_fg
    hidden = 4 * dim
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, tokens, dim),
        "encoder.pos_embed": (1, grid * grid + tokens, dim),
        "encoder.patch_embed.proj.weight": (dim, 3, 16, 16),
        "encoder.patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        p = f"encoder.blocks.{i}."
        shapes.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
            p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
            p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
            p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,),
        })
    shapes.update({
        "encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,),
        "encoder.head.weight": (tokens, dim), "encoder.head.bias": (tokens,),
        "decoder.conv6.weight": (512, dim, 3, 3),
        "decoder.conv7.weight": (512, 512, 3, 3),
        "decoder.conv8.weight": (num_fg + 1, 512, 1, 1),
        "classifier.weight": (num_fg, dim, 1, 1),
        "aux_classifier.weight": (num_fg, dim, 1, 1),
    })
    for name in ("_fc1.0", "head_proj", "tail_proj", "linear1", "linear2"):
        shapes[f"graph_layer.{name}.weight"] = (dim, dim)
        shapes[f"graph_layer.{name}.bias"] = (dim,)
    shapes["graph_layer.norm.weight"] = (dim,)
    shapes["graph_layer.norm.bias"] = (dim,)
    return shapes


def random_checkpoint(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 16
            t = torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))
        state["module." + key] = t
    return state


# -- independent reference: the official forward written step by step on the state dict ---------------

def ref_encoder(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    b, _, h, w = x.shape
    e = sd["encoder.patch_embed.proj.weight"]
    dim = e.shape[0]
    tokens_n = sd["encoder.cls_token"].shape[1]
    patches = F.conv2d(x, e, sd["encoder.patch_embed.proj.bias"], stride=16)  # [B, C, gh, gw]
    gh, gw = patches.shape[-2:]
    seq = torch.cat([sd["encoder.cls_token"].expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], 1)
    pos = sd["encoder.pos_embed"]
    n_native = pos.shape[1] - tokens_n
    if not (gh * gw == n_native and h == w):  # MATformer.interpolate_pos_encoding
        s = int(math.sqrt(n_native))
        grid = pos[:, tokens_n:].reshape(1, s, s, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / s, (gw + 0.1) / s), mode="bicubic")
        pos = torch.cat([pos[:, :tokens_n], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], 1)
    seq = seq + pos
    hd = dim // heads
    for i in range(depth):
        p = f"encoder.blocks.{i}."
        y = F.layer_norm(seq, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        seq = seq + o @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.layer_norm(seq, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        seq = seq + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return F.layer_norm(seq, (dim,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps=1e-6)


def ref_gcr(sd: dict[str, torch.Tensor], cls: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``graphic_cls_aggregation.forward`` as the official file writes it (indexing, einsum, matmul)."""
    def lin(name: str, t: torch.Tensor) -> torch.Tensor:
        return t @ sd[f"graph_layer.{name}.weight"].T + sd[f"graph_layer.{name}.bias"]

    dim = cls.shape[-1]
    topk = int(0.5 * cls.shape[1])
    x = torch.cat([cls, feats], dim=1)
    e_h, e_t = lin("head_proj", cls), lin("tail_proj", x)
    logit = (e_h * dim ** -0.5) @ e_t.transpose(-2, -1)
    w_top, i_top = torch.topk(logit, k=topk, dim=-1)
    nb = e_t[torch.arange(e_t.shape[0]).view(-1, 1, 1), i_top, :]
    prob = F.softmax(w_top, dim=2)
    eh_r = torch.matmul((1 - prob).unsqueeze(-1), e_h.unsqueeze(2)) + prob.unsqueeze(-1) * nb
    gate = torch.tanh(e_h.unsqueeze(2).expand(-1, -1, topk, -1) + eh_r)
    ka = torch.einsum("ijkl,ijkm->ijk", nb, gate)
    e_nh = torch.matmul(F.softmax(ka, dim=2).unsqueeze(2), nb).squeeze(2)
    s = F.leaky_relu(lin("linear1", (e_h + e_nh) * 0.1 + cls))
    bi = F.leaky_relu(lin("linear2", e_h * e_nh * 0.1 + cls))
    return F.layer_norm(s + bi, (dim,), sd["graph_layer.norm.weight"], sd["graph_layer.norm.bias"], eps=1e-5)


def ref_maps(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int, num_fg: int):
    """(raw LAM, raw CAM) over all classes, as ``network.forward`` + ``multi_scale_lam2`` compute them."""
    tokens = ref_encoder(sd, x, depth, heads)
    t = 4 + num_fg
    gh, gw = x.shape[2] // 16, x.shape[3] // 16
    patch_tokens = tokens[:, t:]
    x4 = patch_tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
    refined = ref_gcr(sd, tokens[:, 4:t], patch_tokens)
    lam = torch.einsum("bchw,bkc->bkhw", x4, refined)
    cam = F.conv2d(x4, sd["classifier.weight"])
    return lam, cam


def strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("module.", "", 1): v for k, v in state.items()}
