"""MoRe's network at inference: the multi-class-token ViT, its classifier and the GCR module.

Imported by :class:`wsss_bench.methods.more.MoReAdapter` when it builds its network (listing the
adapter imports no torch); :mod:`wsss_bench.methods.more` re-exports these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit_mct import MultiClassTokenViT, ViTConfig, tokens_to_map
from wsss_bench.methods.more import NUM_EXTRA_TOKENS


class GraphCategoryRepresentation(nn.Module):
    """MoRe's Graph Category Representation (GCR) module, ``graphic_cls_aggregation`` in ``model/GCA.py``.

    Parameter names follow the official ``graph_layer``: ``_fc1.0`` (built but never used by the
    official forward; kept so that checkpoints load strictly), ``head_proj``, ``tail_proj``, ``linear1``,
    ``linear2`` (all Linear C -> C) and ``norm`` (LayerNorm, eps 1e-5).

    For class tokens ``t`` [B, K, C] and patch tokens ``p`` [B, N, C] (treated as constants), with
    ``k = int(ratio * K)``:

    1. ``h = head_proj(t)``; ``e = tail_proj([t; p])`` over all K + N nodes;
    2. logits ``h e^T / sqrt(C)``; each class keeps its top-k nodes ``n_j`` with logits ``w_j`` and
       probabilities ``q = softmax(w)``;
    3. gate ``g_j = tanh(h + (1 - q_j) h + q_j n_j)``; knowledge weights
       ``a_j = (sum_c n_j[c]) * (sum_c g_j[c])`` (the official ``einsum('ijkl,ijkm->ijk')`` sums the two
       feature axes separately: a product of sums, not a dot product); ``r = sum_j softmax(a)_j n_j``;
    4. output ``LayerNorm(LReLU(linear1(0.1 (h + r) + t)) + LReLU(linear2(0.1 h r + t)))``.
    """

    def __init__(self, dim: int = 768, ratio: float = 0.5):
        super().__init__()
        self._fc1 = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU())
        self.head_proj = nn.Linear(dim, dim)
        self.tail_proj = nn.Linear(dim, dim)
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = dim ** -0.5
        self.ratio = ratio

    def forward(self, class_tokens: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        k = int(self.ratio * class_tokens.shape[1])
        if k < 1:
            raise WsssBenchError(f"GCR needs at least 2 class tokens, got {class_tokens.shape[1]}")
        nodes = torch.cat([class_tokens, patch_tokens.detach()], dim=1)
        head = self.head_proj(class_tokens)                          # [B, K, C]
        tail = self.tail_proj(nodes)                                 # [B, K+N, C]
        logits = torch.matmul(head * self.scale, tail.transpose(1, 2))  # [B, K, K+N]
        top_w, top_i = logits.topk(k, dim=-1)                        # [B, K, k]
        b, kk, c = head.shape
        neigh = torch.gather(tail.unsqueeze(1).expand(b, kk, -1, c), 2,
                             top_i.unsqueeze(-1).expand(b, kk, k, c))  # [B, K, k, C]
        q = top_w.softmax(dim=-1).unsqueeze(-1)                       # [B, K, k, 1]
        head_k = head.unsqueeze(2)                                    # [B, K, 1, C]
        gate = torch.tanh(head_k + ((1 - q) * head_k + q * neigh))
        weight = neigh.sum(-1) * gate.sum(-1)                         # [B, K, k]
        reach = (weight.softmax(dim=-1).unsqueeze(-1) * neigh).sum(2)  # [B, K, C]
        summed = F.leaky_relu(self.linear1((head + reach) * 0.1 + class_tokens))
        bilinear = F.leaky_relu(self.linear2(head * reach * 0.1 + class_tokens))
        return self.norm(summed + bilinear)


class MoReNet(nn.Module):
    """The inference part of MoRe's ``network``: ``encoder``, ``classifier`` and ``graph_layer``."""

    def __init__(self, num_classes: int, config: ViTConfig | None = None):
        super().__init__()
        cfg = config or ViTConfig()
        self.num_classes = int(num_classes)
        self.encoder = MultiClassTokenViT(NUM_EXTRA_TOKENS + self.num_classes, cfg)
        self.classifier = nn.Conv2d(cfg.embed_dim, self.num_classes, kernel_size=1, bias=False)
        self.graph_layer = GraphCategoryRepresentation(cfg.embed_dim)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class tokens ``[B, K, C]`` (the 4 extra tokens dropped) and the patch map ``[B, C, gh, gw]``."""
        tokens, patch_map, _ = self.features_and_block(images, None)
        return tokens, patch_map

    def features_and_block(self, images: torch.Tensor, block: int | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`features` plus the raw patch map ``[B, C, gh, gw]`` of ``block`` (before the final
        norm; MoRe's auxiliary classifier reads block ``-3``), or None without a block."""
        normed, raw = self.encoder.forward_tokens_and_block(images, block)
        grid, nt = self.encoder.grid(*images.shape[-2:]), self.encoder.num_tokens
        block_map = None if raw is None else tokens_to_map(raw[:, nt:], grid)
        return normed[:, NUM_EXTRA_TOKENS:nt], tokens_to_map(normed[:, nt:], grid), block_map

    def lam(self, images: torch.Tensor, with_gcr: bool = True) -> torch.Tensor:
        """Raw localisation attention maps ``[B, K, gh, gw]`` (may be negative)."""
        tokens, patch_map = self.features(images)
        if with_gcr:
            tokens = self.graph_layer(tokens, patch_map.flatten(2).transpose(1, 2))
        return lam_from_tokens(patch_map, tokens)

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps ``[B, K, gh, gw]`` (the classifier on the patch map, before ReLU)."""
        _, patch_map = self.features(images)
        return F.conv2d(patch_map, self.classifier.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image logits ``[B, K]``: the classifier after global max pooling (``pooling='gmp'``)."""
        _, patch_map = self.features(images)
        return self.classifier(F.adaptive_max_pool2d(patch_map, 1)).flatten(1)


def lam_from_tokens(patch_map: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
    """LAM: ``einsum('bchw,bkc->bkhw')`` of the patch map and the (refined) class tokens."""
    return torch.einsum("bchw,bkc->bkhw", patch_map, class_tokens)
