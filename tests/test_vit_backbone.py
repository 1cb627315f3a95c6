"""Shared ViT machinery: offline builds, position-embedding resize, token forward, attention capture."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed
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
