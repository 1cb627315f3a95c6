"""Shared ViT machinery: offline builds, position-embedding resize, token forward, attention capture."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn
from vit_reference import reference_vit

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import (
    VIT_SPECS,
    AttentionCapture,
    build_vit,
    num_prefix_tokens,
    resize_pos_embed,
    vit_forward,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return build_vit("vit_tiny_demo")


@pytest.mark.parametrize("name, dim, depth, heads, pos_rows, prefix", [
    ("vit_base", 768, 12, 12, 577, 1),
    ("deit_base_distilled", 768, 12, 12, 578, 2),
    ("vit_tiny", 192, 12, 3, 197, 1),
    ("vit_tiny_demo", 64, 4, 2, 197, 1),
])
def test_builds_each_size_offline_with_the_official_shapes(name, dim, depth, heads, pos_rows, prefix):
    vit = build_vit(name, device="meta")  # shapes only; pretrained=False never downloads
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (dim, depth, heads)
    assert tuple(vit.pos_embed.shape) == (1, pos_rows, dim)
    assert num_prefix_tokens(vit) == prefix
    assert not any(k.startswith("head") for k in vit.state_dict())


def test_unknown_size_is_a_user_error():
    with pytest.raises(WsssBenchError, match="unknown ViT"):
        build_vit("vit_gigantic")
    assert "vit_hybrid" in VIT_SPECS


def test_bilinear_resize_of_a_linear_ramp_matches_hand_computation():
    # patch grid 2 x 2 with value 2r + c in channel 0; prefix row = 7
    pos = torch.tensor([7.0, 0.0, 1.0, 2.0, 3.0]).reshape(1, 5, 1)
    out = resize_pos_embed(pos, 1, (4, 4), mode="bilinear")
    # align_corners=False, 2 -> 4: source coordinates -0.25, 0.25, 0.75, 1.25 clamped -> 0, .25, .75, 1
    s = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = (2 * s[:, None] + s[None, :]).reshape(16)
    assert out[0, 0, 0] == 7.0
    torch.testing.assert_close(out[0, 1:, 0], expected)
    assert resize_pos_embed(pos, 1, (2, 2), mode="bilinear") is pos


def test_bicubic_resize_matches_timm_resample():
    torch.manual_seed(0)
    pos = torch.randn(1, 2 + 36, 8)
    ours = resize_pos_embed(pos, 2, (5, 9), mode="bicubic")
    theirs = resample_abs_pos_embed(pos, new_size=(5, 9), num_prefix_tokens=2, interpolation="bicubic",
                                    antialias=False)
    torch.testing.assert_close(ours, theirs)


def test_forward_at_native_size_matches_timm_forward_features(demo):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = vit_forward(demo, x, keep_blocks=[-1])
        torch.testing.assert_close(out.normed, demo.forward_features(x), atol=1e-5, rtol=1e-5)
    assert out.grid == (14, 14) and set(out.blocks) == {3}


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_forward_at_another_size_matches_step_by_step_reference(demo, mode):
    sd = demo.state_dict()
    x = torch.randn(1, 3, 80, 48)
    with torch.no_grad(), AttentionCapture(demo) as cap:
        out = vit_forward(demo, x, pos_mode=mode, keep_blocks=[3])
    last, normed, attns, grid = reference_vit(sd, "", x, heads=2, pos_mode=mode)
    assert out.grid == grid == (5, 3)
    torch.testing.assert_close(out.blocks[3], last, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.normed, normed, atol=1e-5, rtol=1e-5)
    for i, a in enumerate(attns):  # captured attention == softmax(q k^T / sqrt(d)) by hand
        torch.testing.assert_close(cap.attentions[i], a, atol=1e-6, rtol=1e-5)


def test_distilled_deit_has_two_leading_tokens_in_forward():
    vit = build_vit("deit_base_distilled", embed_dim=32, depth=2, num_heads=2, img_size=64)
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        out = vit_forward(vit, x, pos_mode="bilinear")
    _, normed, _, grid = reference_vit(vit.state_dict(), "", x, heads=2, pos_mode="bilinear", n_tokens=2)
    assert out.num_prefix == 2 and normed.shape[1] == 2 + 6 and grid == (3, 2)
    torch.testing.assert_close(out.normed, normed, atol=1e-5, rtol=1e-5)


def test_captured_gradient_equals_autograd_gradient(demo):
    x = torch.randn(2, 3, 32, 48)
    with AttentionCapture(demo, blocks=[1, -1], grad=True) as cap:
        out = vit_forward(demo, x)
        loss = (out.normed[:, 0] ** 2).sum()
        expected = torch.autograd.grad(loss, [cap.attentions[1], cap.attentions[3]], retain_graph=True)
        loss.backward()
    assert sorted(cap.gradients) == [1, 3]
    torch.testing.assert_close(cap.gradients[1], expected[0])
    torch.testing.assert_close(cap.gradients[3], expected[1])
    demo.zero_grad(set_to_none=True)


def test_hooks_are_released_and_fused_attention_restored_even_on_error(demo):
    fused = [blk.attn.fused_attn for blk in demo.blocks]
    with pytest.raises(RuntimeError, match="boom"), AttentionCapture(demo, grad=True) as cap:
        assert not any(blk.attn.fused_attn for blk in demo.blocks)
        vit_forward(demo, torch.randn(1, 3, 32, 32))
        raise RuntimeError("boom")
    assert [blk.attn.fused_attn for blk in demo.blocks] == fused
    assert not any(blk.attn.attn_drop._forward_hooks for blk in demo.blocks)
    assert len(cap.attentions) == 4
    with pytest.raises(WsssBenchError, match="out of range"):
        AttentionCapture(demo, blocks=[4])


def test_hybrid_trunk_uses_getams_timm04_weight_standardisation():
    from timm.layers import StdConv2d, StdConv2dSame

    from wsss_bench.methods.backbones.vit import StdConv2dTimm04

    vit = build_vit("vit_hybrid_demo")
    convs = [m for m in vit.modules() if isinstance(m, nn.Conv2d) and "backbone" in _name_of(vit, m)]
    assert convs and all(isinstance(m, StdConv2dTimm04) for m in convs)
    assert not any(isinstance(m, (StdConv2d, StdConv2dSame)) for m in vit.modules())
    assert all(m.eps == 1e-5 for m in convs)
    stem = vit.patch_embed.backbone.stem.conv
    assert stem.same_pad and stem.stride == (2, 2)
    # the formula by hand: (w - mean) / (biased std + 1e-5), per output filter
    w = stem.weight.detach()
    flat = w.reshape(w.shape[0], -1).double()
    mean = flat.mean(1, keepdim=True)
    std = ((flat - mean) ** 2).mean(1, keepdim=True).sqrt()
    want = ((flat - mean) / (std + 1e-5)).reshape(w.shape)
    torch.testing.assert_close(stem.standardised_weight().double(), want, atol=1e-6, rtol=1e-6)
    # timm 1.x's formula, (w - mean) / sqrt(var + 1e-8), differs measurably on filters with a small std:
    # here std 0.01, so ours divides by 0.01001 and timm 1.x by 0.0100000005 (a 1e-3 relative change)
    small = StdConv2dTimm04(1, 1, 2, padding=0)
    with torch.no_grad():
        small.weight.copy_(torch.tensor([0.01, -0.01, 0.01, -0.01]).view(1, 1, 2, 2))
    torch.testing.assert_close(small.standardised_weight().flatten(),
                               torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.01 / (0.01 + 1e-5))
    # TF "SAME" padding of the stride-2 7x7 stem on an odd input: the odd pixel goes bottom/right
    x = torch.randn(1, 3, 37, 45)
    pad_h = max((19 - 1) * 2 + 7 - 37, 0)
    pad_w = max((23 - 1) * 2 + 7 - 45, 0)
    xp = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    torch.testing.assert_close(stem(x), torch.nn.functional.conv2d(xp, stem.standardised_weight(), stride=2))


def test_full_size_hybrid_is_converted_with_its_names_and_shapes():
    from timm.layers import StdConv2dSame

    from wsss_bench.methods.backbones.vit import StdConv2dTimm04

    vit = build_vit("vit_hybrid", device="meta")
    reference = timm.create_model("vit_base_r50_s16_384", pretrained=False, num_classes=0, device="meta")
    ours = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    n_ours = sum(isinstance(m, StdConv2dTimm04) for m in vit.modules())
    n_timm = sum(isinstance(m, StdConv2dSame) for m in reference.modules())
    assert n_ours == n_timm == 52


def _name_of(root: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in root.named_modules() if m is module)
