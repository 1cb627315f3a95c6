"""MoRe fidelity: ``compute_maps`` with the adapter's native settings against MoRe's own inference.

The procedure is written again in plain torch from zwyang6/MoRe (no code of it is copied or run):

- input (``datasets/voc.py`` ``VOC12SegDataset`` with ``aug=False``, ``datasets/transforms.py``
  ``normalize_img``): the uint8 RGB image minus (123.675, 116.28, 103.53), divided by (58.395, 57.12,
  57.375), float32; ``tools/infer_lam.py``: ``F.interpolate(inputs, size=[448, 448], mode="bilinear",
  align_corners=False)``;
- maps (``utils/camutils.py`` ``multi_scale_lam2`` / ``multi_scale_cam2``): the 448 input and its flip
  in one batch, each scale ``s != 1`` resized to ``int(s * 448)`` bilinearly; the raw LAM (or CAM) of
  :func:`more_official_layout.ref_maps` upsampled to 448 x 448, flip fused by ``torch.max``, the CAM
  then ReLU-ed, scales summed, ``m + max_pool(-m)`` divided by ``max_pool(m) + 1e-5``;
- labels (``infer_lam.py``): the maps resized bilinearly to the label size, ``cam_to_label`` with
  ``bkg_thre=0.5``: the image-label-masked maps, argmax + 1, background where the top value is ``<= 0.5``.

Weights are random (LayerNorm scales around 1, non-zero biases); images are odd-sized.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from more_official_layout import official_layout, random_checkpoint, ref_maps, strip
from vit_reference import compare_with_official

from wsss_bench.data.base import Sample
from wsss_bench.inference import compute_maps
from wsss_bench.inference.pseudo import hard_label
from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS
from wsss_bench.methods.more import IGNORED_PREFIXES, MoReAdapter, select_more_keys

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_FG = 20
CLASSES = [2, 11, 14]
MULTI_SCALE = (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0)  # infer_lam.py --refine_with_multiscale


def official_input(image: np.ndarray, size: int) -> torch.Tensor:
    arr = image.astype(np.float64)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    proc = np.empty_like(arr, np.float32)
    for c in range(3):
        proc[..., c] = (arr[..., c] - mean[c]) / std[c]
    x = torch.from_numpy(proc).permute(2, 0, 1)[None]
    return F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False)


def official_maps(sd: dict[str, torch.Tensor], image: np.ndarray, map_name: str, scales: tuple[float, ...],
                  depth: int, heads: int, size: int = 448) -> torch.Tensor:
    """``multi_scale_lam2`` / ``multi_scale_cam2`` on the resized image, then resized to the image:
    [NUM_FG, H, W] over all classes."""
    inputs = official_input(image, size)
    b, _, h, w = inputs.shape

    def one(x: torch.Tensor) -> torch.Tensor:
        lam, cam = ref_maps(sd, torch.cat([x, x.flip(-1)], dim=0), depth, heads, NUM_FG)
        m = F.interpolate(lam if map_name == "lam" else cam, size=(h, w), mode="bilinear", align_corners=False)
        m = torch.max(m[:b], m[b:].flip(-1))
        return F.relu(m) if map_name == "cam" else m

    with torch.no_grad():
        maps = [one(inputs)]
        for s in scales:
            if s != 1.0:
                maps.append(one(F.interpolate(inputs, size=(int(s * h), int(s * w)), mode="bilinear",
                                              align_corners=False)))
        m = torch.sum(torch.stack(maps, dim=0), dim=0)
        m = m + F.adaptive_max_pool2d(-m, (1, 1))
        m = m / (F.adaptive_max_pool2d(m, (1, 1)) + 1e-5)
        return F.interpolate(m, size=image.shape[:2], mode="bilinear", align_corners=False)[0]


def official_labels(maps: torch.Tensor, classes: list[int]) -> np.ndarray:
    """``cam_to_label(cam, cls_label, bkg_thre=0.5)``."""
    cls_label = torch.zeros(NUM_FG)
    cls_label[classes] = 1
    valid = cls_label[:, None, None] * maps
    value, label = valid.max(dim=0)
    label = label + 1
    label[value <= 0.5] = 0
    return label.numpy()


def ours(adapter: MoReAdapter, image: np.ndarray, settings) -> tuple[torch.Tensor, np.ndarray]:
    labels = np.zeros(NUM_FG, np.float32)
    labels[CLASSES] = 1
    with torch.no_grad():
        (maps,) = compute_maps(adapter, [Sample("x", image, labels, None)], settings, torch.device("cpu"))
    bg = settings.background
    return maps, hard_label(maps, np.asarray(CLASSES) + 1, (bg.rule, bg.value))


def image_of(h: int, w: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 6, generator=g) * 255
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 20 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 255).round().to(torch.uint8)[0] \
        .permute(1, 2, 0).numpy()


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def adapter_with(sd_module: dict[str, torch.Tensor], backbone: str, map_name: str) -> MoReAdapter:
    """The adapter loaded from the checkpoint through its key filter and a strict load (built on the
    meta device and loaded by assignment)."""
    adapter = MoReAdapter(NUM_FG, backbone, {"map": map_name})
    with torch.device("meta"):
        model = adapter.build()
    state = select_more_keys(sd_module, IGNORED_PREFIXES)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return adapter


@pytest.fixture(scope="module")
def tiny():
    cfg = VIT_MCT_CONFIGS["vit_tiny_demo"]
    return cfg, random_checkpoint(official_layout(NUM_FG, cfg.embed_dim, cfg.depth), seed=7)


@pytest.mark.parametrize("map_name, size, scales, input_size", [
    ("lam", (281, 375), (1.0,), 448),
    ("lam", (333, 500), (1.0,), 448),
    ("cam", (281, 375), (1.0,), 448),
    ("cam", (333, 500), (1.0,), 448),
    ("lam", (333, 500), MULTI_SCALE, 224),  # all seven scales (a smaller input for test time)
    ("cam", (281, 375), MULTI_SCALE, 224),  # the CAM's ReLU after upsampling to the fusion size
])
def test_native_pipeline_matches_official_inference_on_odd_sized_images(tiny, map_name, size, scales,
                                                                        input_size):
    cfg, state = tiny
    adapter = adapter_with(state, "vit_tiny_demo", map_name)
    settings = adapter.native.replace(scales=scales, input_size=input_size)
    image = image_of(*size, seed=sum(size))
    maps, labels = ours(adapter, image, settings)
    want = official_maps(strip(state), image, map_name, scales, cfg.depth, cfg.num_heads, input_size)[CLASSES]
    assert maps.shape == (3, *size) and want.amax() > 0.9
    compare_with_official(maps, want, labels, official_labels_of(want), 0.5)
    assert 0 < (labels > 0).mean() < 1  # the decisions compared are not all one kind


def official_labels_of(want_for_classes: torch.Tensor) -> np.ndarray:
    full = torch.zeros(NUM_FG, *want_for_classes.shape[-2:])
    full[CLASSES] = want_for_classes
    return official_labels(full, CLASSES)


@pytest.mark.parametrize("map_name", ["lam", "cam"])
def test_vit_b16_at_a_smaller_input_size(map_name):
    """The real ViT-B/16 (24 class tokens, 14 x 14 position grid resized to 8 x 8) with the native
    pipeline at input_size 128 instead of 448 (test time)."""
    cfg = VIT_MCT_CONFIGS["vit_base_patch16"]
    state = b16_state()
    adapter = adapter_with(state, "vit_base_patch16", map_name)
    settings = adapter.native.replace(input_size=128)
    image = image_of(141, 187, seed=9)
    maps, labels = ours(adapter, image, settings)
    want = official_maps(strip(state), image, map_name, (1.0,), cfg.depth, cfg.num_heads, size=128)[CLASSES]
    compare_with_official(maps, want, labels, official_labels_of(want), 0.5)


_B16: dict[str, torch.Tensor] = {}


def b16_state() -> dict[str, torch.Tensor]:
    if not _B16:
        _B16.update(random_checkpoint(official_layout(NUM_FG, 768, 12), seed=8))
    return _B16
