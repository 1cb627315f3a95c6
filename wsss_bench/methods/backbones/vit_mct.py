"""A vision transformer with several class tokens (MoRe's multi-class-token ViT), built on timm.

MoRe (Yang et al., "MoRe: Class Patch Attention Needs Regularization for Weakly Supervised Semantic
Segmentation", AAAI 2025) replaces ViT's single class token by ``4 + K`` learnable tokens (4 extra
"regularisation" tokens, then one token per foreground class); the position embedding covers those
tokens and the patches of the 224 x 224 pre-training grid (14 x 14 for patch 16). Official model:
zwyang6/MoRe ``model/backbone/mat_vit.py`` (class ``MATformer``, a subclass of the repository's copy of
the timm ViT in ``model/backbone/vit.py``).

This module builds the same network out of timm's own modules (``timm.layers.PatchEmbed``,
``timm.models.vision_transformer.Block``), never downloading anything, with the parameter names of the
official checkpoint's ``encoder.*`` keys: ``cls_token`` [1, T, C], ``pos_embed`` [1, T + 196, C],
``patch_embed.proj.*``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``
(LayerNorm eps 1e-6, qkv bias, exact GELU). The official encoder also carries an unused timm
classification ``head`` (Linear C -> T) that its forward never calls; it is not built here (the
adapters' key filters drop it).

Position embeddings of the patches are resized bicubically to the input grid the way
``MATformer.interpolate_pos_encoding`` does it (see :func:`resize_patch_pos_embed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import block_index


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a plain ViT: the fields that decide every parameter's shape."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    #: Pre-training image size; the checkpoint's patch position embedding covers its grid.
    img_size: int = 224

    @property
    def native_grid(self) -> tuple[int, int]:
        g = self.img_size // self.patch_size
        return (g, g)


#: Built-in sizes: the real one (MoRe's ViT-B/16) first, then a tiny demo size for tests and the demo.
#: The demo size is 2 blocks of dim 96 with 3 heads (head dim 32): chosen on the demo training set's
#: val split, where its LAM scored 31.7 mIoU against 28.9 at dim 64 with 2 heads and 28.0 at dim 128
#: with 4 heads (docs/demo-log.md lists the runs).
VIT_MCT_CONFIGS: dict[str, ViTConfig] = {
    "vit_base_patch16": ViTConfig(),
    "vit_tiny_demo": ViTConfig(embed_dim=96, depth=2, num_heads=3),
}


def resize_patch_pos_embed(patch_pos: torch.Tensor, grid_in: tuple[int, int], grid_out: tuple[int, int],
                           input_square: bool = True) -> torch.Tensor:
    """Resize patch position embeddings ``[1, gh_in * gw_in, C]`` to ``grid_out`` bicubically.

    Follows ``MATformer.interpolate_pos_encoding`` (zwyang6/MoRe ``model/backbone/mat_vit.py``, itself
    DINO's rule): nothing changes when the number of patches equals the checkpoint's and the input image
    is square; otherwise ``F.interpolate(mode="bicubic", align_corners=False)`` with the *scale factor*
    ``(g_out + 0.1) / g_in`` per axis (not a target size: PyTorch then maps output pixel ``i`` to input
    coordinate ``(i + 0.5) / scale - 0.5``, so the 0.1 shifts the samples slightly, and the floor of
    ``g_in * scale`` gives exactly ``g_out``).
    """
    gh_in, gw_in = grid_in
    gh, gw = grid_out
    n, c = patch_pos.shape[1], patch_pos.shape[2]
    if n != gh_in * gw_in:
        raise WsssBenchError(f"position embedding has {n} patch entries, expected {gh_in}x{gw_in}")
    if gh * gw == n and input_square:
        return patch_pos
    grid = patch_pos.reshape(1, gh_in, gw_in, c).permute(0, 3, 1, 2)
    out = F.interpolate(grid.float(), scale_factor=((gh + 0.1) / gh_in, (gw + 0.1) / gw_in),
                        mode="bicubic", align_corners=False)
    assert out.shape[-2:] == (gh, gw), (out.shape, grid_out)
    return out.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, c)


class MultiClassTokenViT(nn.Module):
    """ViT whose sequence starts with ``num_tokens`` class tokens (MoRe's ``MATformer`` encoder).

    :meth:`forward` returns the final LayerNorm-ed tokens split into class tokens ``[B, T, C]`` and patch
    tokens ``[B, N, C]`` (row-major over the ``(H // p, W // p)`` grid), plus that grid.
    """

    def __init__(self, num_tokens: int, config: ViTConfig | None = None):
        from timm.layers import PatchEmbed, trunc_normal_
        from timm.models.vision_transformer import Block

        super().__init__()
        cfg = config or ViTConfig()
        if num_tokens < 1:
            raise WsssBenchError(f"a multi-class-token ViT needs at least one token, got {num_tokens}")
        self.config = cfg
        self.num_tokens = int(num_tokens)
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=3,
                                      embed_dim=cfg.embed_dim, strict_img_size=False)
        num_patches = cfg.native_grid[0] * cfg.native_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, self.num_tokens, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + num_patches, cfg.embed_dim))
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList([
            Block(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                  norm_layer=norm_layer, act_layer=nn.GELU)
            for _ in range(cfg.depth)])
        self.norm = norm_layer(cfg.embed_dim)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """``[1, T + gh * gw, C]``: the class tokens' entries, then the patches' resized to the grid."""
        cls_pos = self.pos_embed[:, :self.num_tokens]
        patch_pos = resize_patch_pos_embed(self.pos_embed[:, self.num_tokens:], self.config.native_grid,
                                           self.grid(height, width), input_square=height == width)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All final tokens ``[B, T + N, C]`` after the last LayerNorm."""
        return self.forward_tokens_and_block(images, None)[0]

    def forward_tokens_and_block(self, images: torch.Tensor,
                                 block: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The final normed tokens and the raw (un-normed) output of ``block`` (negative indices
        count from the end; MoRe's auxiliary layer is ``-3``, ``feats[aux_layer]`` in ``mat_vit.py``)."""
        keep = None if block is None else block_index(block, len(self.blocks))
        b, _, h, w = images.shape
        gh, gw = self.grid(h, w)
        if gh < 1 or gw < 1:
            raise WsssBenchError(f"input {h}x{w} is smaller than one {self.patch_size}-pixel patch")
        # a stride-p convolution without padding ignores the remainder rows/columns (as the official
        # PatchEmbed does); timm's PatchEmbed asserts divisibility instead, so crop explicitly
        x = self.patch_embed(images[:, :, :gh * self.patch_size, :gw * self.patch_size])
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.position_embedding(h, w).to(x.dtype)
        kept = None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == keep:
                kept = x
        return self.norm(x), kept

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        x = self.forward_tokens(images)
        return x[:, :self.num_tokens], x[:, self.num_tokens:], self.grid(*images.shape[-2:])


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[B, N, C]`` -> feature map ``[B, C, gh, gw]`` (MoRe's ``network.to_2D``)."""
    b, n, c = tokens.shape
    gh, gw = grid
    if n != gh * gw:
        raise WsssBenchError(f"{n} patch tokens do not fill a {gh}x{gw} grid")
    return tokens.transpose(1, 2).reshape(b, c, gh, gw)


def _init_weights(m: nn.Module) -> None:
    from timm.layers import trunc_normal_

    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


__all__ = ["VIT_MCT_CONFIGS", "MultiClassTokenViT", "ViTConfig", "resize_patch_pos_embed", "tokens_to_map"]
