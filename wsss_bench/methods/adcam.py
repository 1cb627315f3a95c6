"""AD-CAM, as read from its abstract only (interpretation: abstract-only).

Paper: J. Huang et al., "Attention-based Class Activation Diffusion for Weakly-Supervised Semantic
Segmentation" (arXiv 2211.10931). No public code was found, so this adapter implements our reading of
the abstract as written down in docs/methods.md ("AD-CAM"); every record it writes carries
``interpretation: "abstract-only"``. Nothing here is verified against the authors' implementation.

Network (our own layout, any timm ViT of :mod:`wsss_bench.methods.backbones.vit`):
``backbone`` (the ViT, position embedding resized bicubically to the input grid) and ``classifier``,
a 1 x 1 convolution without bias (D -> classes) over the final *normed* patch tokens laid out on
the patch grid. Image logits are the classifier applied after global average pooling of the patch
tokens (equivalently, the spatial mean of the classifier map), the classic CAM of Zhou et al.; the
pooling only matters for training, not for the maps. CAM = ReLU(classifier(patch tokens)).

Map (pure functions below):

1. Attention A [P, P]: softmax attention of the blocks in ``attn_blocks``, averaged over heads and
   blocks; rows and columns of the leading (class, distillation) tokens removed; rows renormalised
   to sum to 1 (:func:`patch_attention`).
2. Conservative refinement: ``S = A A^T`` (probability that patches i and j reach a common
   neighbour), ``A' = A * S`` element-wise, rows renormalised (:func:`refine_attention`).
3. Convincing diffusion: ``CAM' = (A'^T)^t CAM`` for ``t = iterations`` (each patch spreads its
   activation to its neighbours in proportion to its row of A'; :func:`diffuse`), then per-class
   division by max + 1e-5, at the patch grid, for each view: this normalisation is part of the map
   (each view of the multi-scale settings then weighs the same in the runner's sum, which the runner
   normalises again; the diffused maps' magnitudes vary from view to view: on the demo set, summing
   them un-normalised scored 30.4 mIoU against 34.3).

Variant ``"direct"`` (the coupling the abstract criticises): the pixel-wise product of the CAM and
the class-token attention map (row 0 of the head- and block-averaged attention, patch columns), then
the same max normalisation (:func:`direct_coupling`).

Decisions on what the abstract leaves open (UNVERIFIED):

- ``attn_blocks`` default ``"auto"`` = the last third of the blocks (``ceil(depth / 3)`` blocks: 8..11 of 12,
  2..3 of the 4-block demo ViT), since the later blocks' attention is the most
  semantic; also accepted: ``"all"``, ``"a-b"`` (inclusive), ``"i,j,k"``.
- Heads are averaged before the refinement; the refinement is applied once (not per iteration).
- Rows of A' are renormalised with a 1e-12 floor; the diffusion is applied at the patch grid and
  the runner upsamples bilinearly (``align_corners=False``).
- The direct variant uses the first leading token's row (the class token) averaged over the same
  blocks and heads, not renormalised (the max normalisation makes any constant factor irrelevant).
- Native inference settings are the shared standard ones (multi-scale 1.0/0.5/1.5/2.0 with flip,
  summed, max-normalised, background 0.15 as IRN): the abstract gives none.
- Default backbone: ViT-B/16 (the paper's backbone is not stated in the abstract).

Checkpoint (our own layout): ``backbone.*`` (timm names; an ImageNet ``backbone.head*`` is dropped)
and ``classifier.weight`` [classes, D, 1, 1]; a ``module.`` prefix is stripped.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import STANDARD_SETTINGS, InferenceSettings, MethodAdapter
from wsss_bench.plugins import lazy_exports

if TYPE_CHECKING:
    import torch
    from torch import nn

ADCAM_POS_MODE = "bicubic"

#: the network and attention code (torch, timm) is imported when the adapter runs; re-exported from here
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ("ADCAMNet", "mean_attention", "renormalise_rows", "patch_attention", "refine_attention", "diffuse",
     "class_token_attention", "direct_coupling", "normalise_max", "_ROW_FLOOR"), "wsss_bench.methods.nets.adcam")
    | dict.fromkeys(("AttentionCapture", "build_vit", "embed_dim", "tokens_to_grid", "vit_forward"),
                    "wsss_bench.methods.backbones.vit"))


def parse_attn_blocks(spec: str, depth: int) -> list[int]:
    """``"auto"`` (last ceil(depth/3) blocks), ``"all"``, ``"a-b"`` (inclusive) or ``"i,j,k"``."""
    s = str(spec).strip().lower()
    if s == "auto":
        n = max(1, math.ceil(depth / 3))
        blocks = list(range(depth - n, depth))
    elif s == "all":
        blocks = list(range(depth))
    elif re.fullmatch(r"\d+\s*-\s*\d+", s):
        lo, hi = (int(p) for p in s.split("-"))
        blocks = list(range(lo, hi + 1))
    elif re.fullmatch(r"-?\d+(\s*,\s*-?\d+)*", s):
        blocks = [int(p) for p in s.split(",")]
    else:
        raise WsssBenchError(f"ad-cam: cannot read attn_blocks {spec!r} (use auto, all, a-b or i,j,k)")
    blocks = [(b + depth) if b < 0 else b for b in blocks]
    if not blocks or any(not 0 <= b < depth for b in blocks):
        raise WsssBenchError(f"ad-cam: attn_blocks {spec!r} is not a set of blocks of a {depth}-block ViT")
    return sorted(set(blocks))


class ADCAMAdapter(MethodAdapter):
    name: ClassVar[str] = "ad-cam"
    description: ClassVar[str] = ("CAM diffused along common-neighbour-refined ViT attention "
                                  "(abstract-only interpretation)")
    paper: ClassVar[str] = ("Huang et al., Attention-based Class Activation Diffusion for Weakly-Supervised "
                            "Semantic Segmentation (AD-CAM), arXiv 2211.10931 (abstract only; no public code)")
    official_code: ClassVar[str] = ""
    backbones: ClassVar[tuple[str, ...]] = (
        "vit_base", "deit_base", "deit_base_distilled", "vit_small", "vit_tiny", "vit_tiny_demo",
    )
    hyperparameters: ClassVar[dict[str, Any]] = {
        "iterations": 2,
        "attn_blocks": "auto",
        "variant": "diffusion",
    }
    native: ClassVar[InferenceSettings] = STANDARD_SETTINGS
    record_fields: ClassVar[dict[str, Any]] = {"interpretation": "abstract-only"}

    def build(self) -> nn.Module:
        if self.hparams["variant"] not in ("diffusion", "direct"):
            raise WsssBenchError(f"ad-cam: variant must be 'diffusion' or 'direct', got {self.hparams['variant']!r}")
        if int(self.hparams["iterations"]) < 0:
            raise WsssBenchError("ad-cam: iterations must be >= 0")
        from wsss_bench.methods.nets.adcam import ADCAMNet

        self.model = ADCAMNet(self.backbone, self.num_classes).eval()
        self.attn_block_indices = parse_attn_blocks(self.hparams["attn_blocks"], len(self.model.backbone.blocks))
        return self.model

    def filter_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return filter_adcam_checkpoint(state)

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        import torch

        from wsss_bench.methods.backbones.vit import AttentionCapture
        from wsss_bench.methods.nets.adcam import (
            class_token_attention,
            diffuse,
            direct_coupling,
            mean_attention,
            normalise_max,
            patch_attention,
            refine_attention,
        )

        if self.model is None:
            self.build()
        vit = self.model.backbone
        with AttentionCapture(vit, blocks=self.attn_block_indices) as cap:
            scores = self.model.classifier_map(views)
            attn = mean_attention(cap.attention_list())
            cap.clear()
        v, _, gh, gw = scores.shape
        n_prefix = int(vit.num_prefix_tokens)
        # the refinement and diffusion run in float32 even under the runner's autocast
        with torch.autocast(device_type=scores.device.type, enabled=False):
            cam = torch.relu(scores[:, classes.to(scores.device).long()]).float().flatten(2)  # [V, K, P]
            attn = attn.float()
            if self.hparams["variant"] == "direct":
                out = direct_coupling(cam, class_token_attention(attn, n_prefix))
            else:
                a = refine_attention(patch_attention(attn, n_prefix))
                out = diffuse(cam, a, int(self.hparams["iterations"]))
            return normalise_max(out).reshape(v, -1, gh, gw)


def filter_adcam_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our AD-CAM layout -> :class:`ADCAMNet` names (pure): strip ``module.``, drop ImageNet heads."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "classifier.weight" not in state:
        raise WsssBenchError("not an AD-CAM checkpoint: no classifier.weight")
    drop = ("backbone.head.", "backbone.head_dist.", "backbone.pre_logits.", "backbone.fc_norm.")
    return {k: v for k, v in state.items() if not k.startswith(drop)}
