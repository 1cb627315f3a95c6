"""GETAM fidelity: ``compute_maps`` with the adapter's native settings against GETAM's own procedure.

The procedure is written again, in plain torch and numpy, from weixuansun/GETAM (no code of it is
copied or run here):

- input (``myTool.get_data_from_chunk_v3``): the image as float RGB in 0..255, resized with
  ``cv2.resize`` (bilinear on the float image, equal to ``F.interpolate(mode="bilinear",
  align_corners=False)`` in float64, see :func:`test_opencv_float_resize_is_plain_bilinear`) to the
  ``--crop_size`` square, normalised with the ImageNet mean/std;
- map (``train_from_init.py`` + ``DPT/DPT.py generate_cam_2``): :func:`vit_reference.reference_getam`,
  one class at a time, then ``cam / (max + 1e-5)`` at the crop size (PAMR left out, as the map does);
- decisions (``myTool.compute_seg_label_3``): background ``(1 - max) ** 32`` over all 20 class planes
  (zeros for absent classes), ``np.argmax`` with ties to the background;
- back to the image: GETAM's labels live on the crop; the benchmark resizes the normalised map to
  the image bilinearly (``align_corners=False``), the one step that is ours.

Weights are random with non-trivial LayerNorm / group-norm affine parameters; images are odd-sized.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vit_reference import (
    compare_with_official,
    getam_official_layout,
    random_state,
    reference_getam,
    resnetv2_r50_hybrid_layout,
)

from wsss_bench.data.base import Sample
from wsss_bench.inference import compute_maps
from wsss_bench.inference.pseudo import hard_label
from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD
from wsss_bench.methods.getam import GETAM_BACKGROUND, GETAMAdapter, filter_getam_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 20
CLASSES = [3, 11]
#: scales cls_head so that the gradient-squared maps are far above the 1e-5 epsilon (a "trained" head);
#: without it the maps' maxima are below the epsilon and the normalised maps stay well under 1
STRONG_HEAD = {"cls_head.weight": 2000.0}


def official_input(image: np.ndarray, crop: int) -> torch.Tensor:
    """``cvtColor(BGR2RGB).astype(float)``, ``cv2.resize`` to crop x crop (0: none), normalisation."""
    img = torch.from_numpy(image).double().permute(2, 0, 1)[None]
    if crop:
        img = F.interpolate(img, size=(crop, crop), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((img / 255.0 - mean) / std).float()


def official_getam(sd: dict[str, torch.Tensor], image: np.ndarray, classes: list[int], crop: int, heads: int,
                   start: int, n_tokens: int = 1, trunk_groups: int | None = None) -> torch.Tensor:
    """GETAM's normalised maps [K, H, W] of ``image`` for ``classes`` (see the module docstring)."""
    h, w = image.shape[:2]
    raw = reference_getam(sd, official_input(image, crop), classes, heads, start, n_tokens, trunk_groups)
    norm = raw / (raw.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    if crop:
        norm = F.interpolate(norm, size=(h, w), mode="bilinear", align_corners=False)
    return norm[0]


def official_labels(maps: torch.Tensor, classes: list[int]) -> np.ndarray:
    """``compute_seg_label_3``'s first step: argmax over [(1 - max)^32, 20 class planes]."""
    cam_np = np.zeros((NUM_CLASSES, *maps.shape[-2:]), np.float32)
    cam_np[classes] = maps.numpy()
    bg = np.power(1 - np.max(cam_np, 0), 32)
    return np.argmax(np.concatenate([bg[None], cam_np]), 0)


def ours(adapter: GETAMAdapter, image: np.ndarray, classes: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    labels = np.zeros(NUM_CLASSES, np.float32)
    labels[classes] = 1
    (maps,) = compute_maps(adapter, [Sample("x", image, labels, None)], adapter.native, torch.device("cpu"))
    return maps, hard_label(maps, np.asarray(classes) + 1, (adapter.native.background.rule,
                                                            adapter.native.background.value))


def image_of(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random colour field plus noise (so that maps have structure), uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 5, 7, generator=g) * 255
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noisy = smooth + 20 * torch.randn(1, 3, h, w, generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def randomise(model: torch.nn.Module, seed: int, head_scale: float) -> dict[str, torch.Tensor]:
    """Random parameters in place (norm weights around 1, biases non-zero); returns the state dict."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(".weight") and p.ndim == 1:  # LayerNorm / GroupNorm scale
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
            if name == "cls_head.weight":
                p.mul_(head_scale)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def compare(got: torch.Tensor, want: torch.Tensor, got_labels: np.ndarray, want_labels: np.ndarray) -> None:
    compare_with_official(got, want, got_labels, want_labels, GETAM_BACKGROUND.threshold())


@pytest.mark.parametrize("backbone, crop, size, head_scale, groups", [
    ("vit_tiny_demo", 256, (281, 375), 2000.0, None),   # the native crop, a trained-like head
    ("vit_tiny_demo", 256, (333, 500), 1.0, None),  # a weak head: maxima below the 1e-5 epsilon
    ("vit_tiny_demo", 0, (281, 375), 2000.0, None),     # crop_size 0: the image at its own size
    ("vit_hybrid_demo", 256, (333, 500), 2000.0, 8),
    ("vit_hybrid_demo", 96, (281, 375), 2000.0, 8),     # the demo backbones' default crop
    ("vit_hybrid_demo", 0, (121, 163), 2000.0, 8),
])
def test_demo_backbones_match_getams_procedure_on_odd_sized_images(backbone, crop, size, head_scale, groups):
    adapter = GETAMAdapter(NUM_CLASSES, backbone, {"crop_size": crop})
    sd = randomise(adapter.build(), seed=sum(size), head_scale=head_scale)
    image = image_of(*size, seed=1)
    maps, labels = ours(adapter, image, CLASSES)
    heads = adapter.model.pretrained.model.blocks[0].attn.num_heads
    want = official_getam(sd, image, CLASSES, crop, heads, adapter.start_block, trunk_groups=groups)
    assert maps.shape == (2, *size)
    if head_scale > 1:
        assert want.amax() > 0.99  # not dominated by the epsilon
    else:
        assert want.amax() < 0.5  # the weak head: the epsilon matters, exactly as in the official code
    compare(maps, want, labels, official_labels(want, CLASSES))


@functools.lru_cache(maxsize=2)
def official_state(tokens: int = 1, hybrid: bool = False) -> dict[str, torch.Tensor]:
    """Random weights in GETAM's checkpoint layout (ViT-B/16 shapes; ``hybrid``: the R50 trunk), made
    once per module. The trunk's last group norm of each block starts small (as a zero-initialised
    residual would), which keeps float32 rounding in the 16 random blocks near 1e-6 instead of 4e-5."""
    shapes, _ = getam_official_layout(num_classes=NUM_CLASSES, tokens=tokens)
    scale = dict(STRONG_HEAD)
    if hybrid:
        shapes["pretrained.model.patch_embed.proj.weight"] = (768, 1024, 1, 1)
        shapes.update(resnetv2_r50_hybrid_layout("pretrained.model.patch_embed.backbone."))
        scale["norm3.weight"] = 0.1
    return random_state(shapes, seed=5 + tokens + 2 * hybrid, scale=scale)


def adapter_from_official_state(backbone: str, crop: int, sd: dict[str, torch.Tensor]) -> GETAMAdapter:
    """The adapter with ``sd`` through its key filter and a strict load (built on the meta device and
    loaded by assignment: a ViT-B initialised at random only to be overwritten is slow)."""
    adapter = GETAMAdapter(NUM_CLASSES, backbone, {"crop_size": crop})
    with torch.device("meta"):
        model = adapter.build()
    state = filter_getam_checkpoint(sd)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True, assign=True)
    return adapter


@pytest.mark.parametrize("backbone, tokens, crop, size", [
    ("vit_base", 1, 64, (141, 187)),
    ("deit_base", 1, 64, (141, 187)),
    ("deit_base_distilled", 2, 64, (141, 187)),
    ("vit_base", 1, 0, (75, 93)),  # own size: a 4 x 5 grid, the remainder pixels unseen as in GETAM
])
def test_b16_backbones_from_the_official_checkpoint_layout(backbone, tokens, crop, size):
    sd = official_state(tokens)
    adapter = adapter_from_official_state(backbone, crop, sd)
    image = image_of(*size, seed=2)
    maps, labels = ours(adapter, image, CLASSES)
    want = official_getam(sd, image, CLASSES, crop, heads=12, start=6, n_tokens=tokens)
    assert want.amax() > 0.99
    compare(maps, want, labels, official_labels(want, CLASSES))


def test_r50_hybrid_with_timm04_weight_standardisation():
    sd = official_state(hybrid=True)
    adapter = adapter_from_official_state("vit_hybrid", 64, sd)
    image = image_of(141, 187, seed=3)
    maps, labels = ours(adapter, image, CLASSES)
    want = official_getam(sd, image, CLASSES, 64, heads=12, start=6, trunk_groups=32)
    assert want.amax() > 0.99
    compare(maps, want, labels, official_labels(want, CLASSES))


def test_opencv_float_resize_is_plain_bilinear():
    """GETAM resizes the float image with ``cv2.resize`` (INTER_LINEAR): no antialiasing, half-pixel
    centres, i.e. ``F.interpolate(mode="bilinear", align_corners=False)``."""
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(0).uniform(0, 255, (281, 375, 3))
    for size in ((256, 256), (480, 480), (97, 131)):
        ours_ = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size, mode="bilinear",
                              align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(cv2.resize(img, size[::-1]), ours_, rtol=0, atol=1e-9)
