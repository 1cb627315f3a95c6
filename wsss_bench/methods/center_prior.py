"""The centre prior: a floor every method must clear.

It needs no weights: each of the image's classes gets the same isotropic Gaussian centred on the
image (standard deviation ``sigma`` times the shorter side). With the lowest class index winning
ties, the pseudo label is one centred blob of the first class. A leaderboard shows how far above
this trivial map each method is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from wsss_bench.methods.base import Background, InferenceSettings, MethodAdapter

if TYPE_CHECKING:
    import torch
    from torch import nn


class CenterPriorAdapter(MethodAdapter):
    name = "center-prior"
    description = "No-weights floor: the same centred Gaussian map for each of the image's classes"
    paper = "(baseline) a centre-bias prior"
    official_code = "-"
    backbones = ("none",)
    hyperparameters: ClassVar[dict] = {"sigma": 0.25}
    needs_checkpoint = False
    native = InferenceSettings(scales=(1.0,), flip=False, normalization="max", eps=1e-5,
                               background=Background("constant", 0.5))

    def build(self) -> nn.Module:
        from torch import nn

        self.model = nn.Identity()
        return self.model

    def forward_maps(self, views: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        import torch

        V, _, h, w = views.shape
        sigma = float(self.hparams["sigma"]) * min(h, w)
        ys = torch.arange(h, device=views.device, dtype=torch.float32) - (h - 1) / 2
        xs = torch.arange(w, device=views.device, dtype=torch.float32) - (w - 1) / 2
        g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
        return g.expand(V, classes.numel(), h, w).clone()
