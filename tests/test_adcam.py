"""AD-CAM (abstract-only reading): refinement, diffusion, direct coupling, checkpoint and maps."""

from __future__ import annotations

import pytest
import torch
from vit_reference import random_state, reference_vit, vit_layout

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.adcam import (
    ADCAMAdapter,
    diffuse,
    direct_coupling,
    filter_adcam_checkpoint,
    parse_attn_blocks,
    patch_attention,
    refine_attention,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_attention(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, n, n, generator=g) * 3, dim=-1)


def test_identity_attention_leaves_the_cam_unchanged():
    cam = torch.rand(2, 3, 6)
    eye = torch.eye(7).expand(2, 7, 7)  # with a class-token row/column, removed by patch_attention
    a = refine_attention(patch_attention(eye, num_prefix=1))
    torch.testing.assert_close(a, torch.eye(6).expand(2, 6, 6))
    torch.testing.assert_close(diffuse(cam, a, iterations=3), cam)


def test_refined_attention_rows_sum_to_one():
    a = patch_attention(random_attention(3, 10), num_prefix=2)
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 8))
    r = refine_attention(a)
    torch.testing.assert_close(r.sum(-1), torch.ones(3, 8))
    assert (r >= 0).all()


def test_refinement_on_a_hand_worked_case():
    a = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    # S = A A^T = [[.5, .5], [.5, .625]]; A * S = [[.25, .25], [.125, .46875]]; rows renormalised
    expected = torch.tensor([[[0.5, 0.5], [0.125 / 0.59375, 0.46875 / 0.59375]]])
    torch.testing.assert_close(refine_attention(a), expected)


def test_diffusion_is_a_random_walk_with_a_naive_loop_reference():
    a = refine_attention(patch_attention(random_attention(1, 5, seed=3), 1))[0]
    cam = torch.rand(1, 2, 4)
    out = diffuse(cam, a[None], iterations=2)
    ref = cam[0].clone()
    for _ in range(2):
        nxt = torch.zeros_like(ref)
        for k in range(2):
            for j in range(4):
                nxt[k, j] = sum(a[i, j] * ref[k, i] for i in range(4))
        ref = nxt
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(out.sum(-1), cam.sum(-1))  # mass is preserved (row-stochastic)


def test_direct_coupling_is_the_pixelwise_product():
    cam = torch.rand(2, 3, 5)
    cls_attn = torch.rand(2, 5)
    out = direct_coupling(cam, cls_attn)
    for b in range(2):
        for k in range(3):
            for p in range(5):
                assert out[b, k, p] == cam[b, k, p] * cls_attn[b, p]


def test_attn_blocks_parsing():
    assert parse_attn_blocks("auto", 12) == [8, 9, 10, 11]
    assert parse_attn_blocks("auto", 4) == [2, 3]
    assert parse_attn_blocks("2-4", 12) == [2, 3, 4]
    assert parse_attn_blocks("0, -1", 4) == [0, 3]
    assert parse_attn_blocks("all", 3) == [0, 1, 2]
    for bad in ("12", "x", "5-3"):
        with pytest.raises(WsssBenchError, match="attn_blocks"):
            parse_attn_blocks(bad, 12)


def our_layout(num_classes: int, dim: int = 64, depth: int = 4) -> dict[str, tuple[int, ...]]:
    shapes = vit_layout("backbone.", dim, depth, grid=14)
    shapes["classifier.weight"] = (num_classes, dim, 1, 1)
    return shapes


def reference_adcam(sd, x, classes, blocks, variant, iterations, heads=2):
    """Step by step: plain-torch ViT, CAM, averaged attention, refinement, diffusion or product, each
    map divided by its max + 1e-5."""
    _, normed, attns, (gh, gw) = reference_vit(sd, "backbone.", x, heads=heads, pos_mode="bicubic")
    w = sd["classifier.weight"][:, :, 0, 0]
    cam = torch.relu(normed[:, 1:] @ w.T).transpose(1, 2)[:, classes]  # [V, K, P]
    attn = sum(attns[b].mean(1) for b in blocks) / len(blocks)  # [V, N, N]
    if variant == "direct":
        out = cam * attn[:, 0, 1:][:, None]
    else:
        a = attn[:, 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
        a = a * (a @ a.transpose(1, 2))
        a = a / a.sum(-1, keepdim=True)
        out = cam
        for _ in range(iterations):
            out = torch.einsum("vki,vij->vkj", out, a)
    out = out / (out.amax(-1, keepdim=True) + 1e-5)
    return out.reshape(x.shape[0], len(classes), gh, gw)


@pytest.mark.parametrize("variant, iterations, blocks", [
    ("diffusion", 2, "auto"), ("diffusion", 1, "0-3"), ("diffusion", 0, "1"), ("direct", 2, "auto"),
])
def test_maps_match_step_by_step_reference_after_strict_load(tmp_path, variant, iterations, blocks):
    shapes = our_layout(5)
    sd = random_state(shapes, seed=4, std=0.2)
    path = tmp_path / "adcam.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DDP prefix and ImageNet head dropped
    adapter = ADCAMAdapter(5, "vit_tiny_demo", {"variant": variant, "iterations": iterations,
                                                "attn_blocks": blocks})
    adapter.load_checkpoint(str(path))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        maps = adapter.forward_maps(x, torch.tensor([1, 4]))
        ref = reference_adcam(sd, x, [1, 4], parse_attn_blocks(blocks, 4), variant, iterations)
    assert maps.shape == (2, 2, 4, 5) and (maps >= 0).all()
    torch.testing.assert_close(maps, ref, atol=1e-4, rtol=1e-4)


def test_records_say_abstract_only_and_bad_settings_are_user_errors():
    assert ADCAMAdapter.record_fields == {"interpretation": "abstract-only"}
    assert ADCAMAdapter.hyperparameters == {"iterations": 2, "attn_blocks": "auto", "variant": "diffusion"}
    with pytest.raises(WsssBenchError, match="variant"):
        ADCAMAdapter(5, "vit_tiny_demo", {"variant": "both"}).build()
    with pytest.raises(WsssBenchError, match="classifier.weight"):
        filter_adcam_checkpoint({"backbone.cls_token": torch.zeros(1)})


def test_distilled_backbone_drops_both_leading_tokens(monkeypatch):
    from wsss_bench.methods.backbones import vit as vit_mod
    monkeypatch.setitem(vit_mod.VIT_SPECS, "deit_distilled_test", vit_mod.ViTSpec(
        "deit_base_distilled_patch16_384", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64}))

    class Small(ADCAMAdapter):
        backbones = ("deit_distilled_test",)
    adapter = Small(3)
    adapter.build()
    with torch.no_grad():
        maps = adapter.forward_maps(torch.randn(1, 3, 48, 64), torch.tensor([0, 2]))
    assert maps.shape == (1, 2, 3, 4) and torch.isfinite(maps).all()


def test_bf16_autocast_keeps_the_diffusion_in_float32():
    torch.manual_seed(0)
    adapter = ADCAMAdapter(5, "vit_tiny_demo")
    adapter.build()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = adapter.forward_maps(x, torch.tensor([0, 3]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = adapter.forward_maps(x, torch.tensor([0, 3]))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, atol=2e-2, rtol=0)


def official_adcam_pipeline(sd, image, classes, blocks, iterations=2, scales=(1.0, 0.5, 1.5, 2.0)):
    """METHODS.md's AD-CAM with its native (= the standard) settings, written out independently:
    Pillow bicubic rescale of the uint8 image to ``round(s * side)`` (numpy's half-to-even), ImageNet
    normalisation, each scale and its mirror through :func:`reference_adcam`, every map upsampled
    bilinearly (``align_corners=False``) to the image (each view's map already divided by its max +
    1e-5 at the patch grid), mirrors flipped back, all views summed, each class divided by its max +
    1e-5. [K, H, W]."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD

    h, w = image.shape[:2]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    total = torch.zeros(len(classes), h, w)
    for s in scales:
        size = (int(np.round(h * s)), int(np.round(w * s)))
        scaled = image if size == (h, w) else np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))
        x = (torch.from_numpy(scaled.copy()).permute(2, 0, 1)[None].float() / 255 - mean) / std
        for flip in (False, True):
            view = x.flip(-1) if flip else x
            m = reference_adcam(sd, view, classes, blocks, "diffusion", iterations)
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0]
            total += m.flip(-1) if flip else m
    total = total.clamp(min=0)
    return total / (total.amax(dim=(-2, -1), keepdim=True) + 1e-5)


@pytest.mark.parametrize("size", [(141, 187), (97, 131)])  # odd sides; small for test time (P^3 diffusion)
def test_native_pipeline_matches_the_described_procedure_on_odd_sized_images(size):
    import numpy as np
    from vit_reference import compare_with_official

    from wsss_bench.data.base import Sample
    from wsss_bench.inference import compute_maps
    from wsss_bench.inference.pseudo import hard_label
    from wsss_bench.methods.adcam import filter_adcam_checkpoint
    from wsss_bench.plugins import load_strict

    sd = random_state(our_layout(20), seed=11, std=0.2)
    adapter = ADCAMAdapter(20, "vit_tiny_demo")
    load_strict(adapter.build(), filter_adcam_checkpoint(sd), "adcam.pth")
    g = torch.Generator().manual_seed(sum(size))
    coarse = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=g) * 255, size=size, mode="bilinear")
    image = (coarse + 20 * torch.randn(1, 3, *size, generator=g)).clamp(0, 255).round().to(torch.uint8)[0]
    image = image.permute(1, 2, 0).numpy()
    classes = [4, 9]
    labels = np.zeros(20, np.float32)
    labels[classes] = 1
    settings = adapter.native
    with torch.no_grad():
        (maps,) = compute_maps(adapter, [Sample("x", image, labels, None)], settings, torch.device("cpu"))
        want = official_adcam_pipeline(sd, image, classes, adapter.attn_block_indices)
    t = settings.background.threshold()
    got_labels = hard_label(maps, np.asarray(classes) + 1, ("constant", t))
    m, k = want.max(dim=0)  # IRN's rule: argmax over a constant background plane, ties to background
    want_labels = torch.where(m > t, torch.tensor(classes)[k] + 1, 0).numpy()
    assert 0 < (want_labels > 0).mean() < 1
    compare_with_official(maps, want, got_labels, want_labels, t)


def test_paper_is_cited_with_its_title():
    assert "Attention-based Class Activation Diffusion for Weakly-Supervised Semantic Segmentation" in ADCAMAdapter.paper
    assert "Huang" in ADCAMAdapter.paper and "2211.10931" in ADCAMAdapter.paper
