"""GETAM adapter: official checkpoint layout, maps against a step-by-step reference, batching, leaks."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import pytest
import torch
from vit_reference import getam_official_layout, random_state, reference_getam

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones import vit as vit_mod
from wsss_bench.methods.backbones.vit import ViTSpec
from wsss_bench.methods.base import NORMALIZATIONS
from wsss_bench.methods.getam import (
    NATIVE_NORMALIZATION,
    GETAMAdapter,
    filter_getam_checkpoint,
    getam_token_map,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# cls_head scaled up so that the (gradient-squared) maps are far above the 1e-5 epsilon
HEAD_SCALE = {"cls_head.weight": 2000.0}


def assert_close_relative(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    """Maps agree to ``tol`` relative to their largest value."""
    scale = want.abs().amax()
    assert scale > 0
    torch.testing.assert_close(got / scale, want / scale, atol=tol, rtol=0)


def normalised(raw: torch.Tensor) -> torch.Tensor:
    """``train_from_init.py``: ``cam / (max + 1e-5)`` per map."""
    return raw / (raw.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def save(state: dict[str, torch.Tensor], path) -> str:
    torch.save(state, path)
    return str(path)


def test_official_vit_b_checkpoint_loads_strictly_and_maps_match_step_by_step_reference(tmp_path):
    shapes, ignored = getam_official_layout(num_classes=20)
    sd = random_state(shapes, seed=1, scale=HEAD_SCALE)
    adapter = GETAMAdapter(20, "vit_base")
    adapter.load_checkpoint(save(sd, tmp_path / "getam.pth"))
    loaded = adapter.model.state_dict()
    assert set(loaded) == set(shapes) - ignored
    assert all(torch.equal(loaded[k], sd[k]) for k in loaded)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 48, 64)  # 3 x 4 patch grid (non-square), pos embed resized from 24 x 24
    classes = torch.tensor([3, 11])
    maps = adapter.forward_maps(x, classes)
    ref = normalised(reference_getam(sd, x, [3, 11], heads=12, start=6, n_tokens=1))
    assert maps.shape == (1, 2, 48, 64)
    assert ref.amax() > 0.99  # the check below is not dominated by the epsilon
    assert_close_relative(maps, ref)


@pytest.fixture
def small_distilled(monkeypatch):
    """A 2-block, dim-32 distilled DeiT in the official layout (two leading tokens, 4 x 4 pos grid)."""
    monkeypatch.setitem(vit_mod.VIT_SPECS, "deit_distilled_test", ViTSpec(
        "deit_base_distilled_patch16_384", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64}))

    class Small(GETAMAdapter):
        backbones = ("deit_distilled_test",)
    return Small


def test_distilled_variant_matches_reference_with_two_leading_tokens(tmp_path, small_distilled):
    shapes, ignored = getam_official_layout(num_classes=5, dim=32, depth=2, grid=4, tokens=2)
    sd = random_state(shapes, seed=2, scale=HEAD_SCALE)
    adapter = small_distilled(5, hparams={"start_block": 0})
    adapter.load_checkpoint(save(sd, tmp_path / "getam_deit.pth"))
    x = torch.randn(2, 3, 80, 48)
    maps = adapter.forward_maps(x, torch.tensor([0, 4]))
    ref = normalised(reference_getam(sd, x, [0, 4], heads=2, start=0, n_tokens=2))
    assert ref.amax() > 0.99
    assert_close_relative(maps, ref)


def test_batched_classes_equal_one_class_at_a_time():
    torch.manual_seed(0)
    adapter = GETAMAdapter(5, "vit_tiny_demo")
    adapter.build()
    with torch.no_grad():
        adapter.model.cls_head.weight.mul_(1000)
    x = torch.randn(2, 3, 64, 96)
    classes = torch.tensor([0, 2, 4])
    batched = adapter.forward_maps(x, classes)
    single = torch.stack([torch.cat([adapter.forward_maps(x[v:v + 1], classes[k:k + 1])[0]
                                     for k in range(3)]) for v in range(2)])
    assert_close_relative(batched, single, 1e-5)
    chunked = GETAMAdapter(5, "vit_tiny_demo", hparams={"grad_batch": 2})
    chunked.model = adapter.model
    chunked.start_block = adapter.start_block
    assert_close_relative(chunked.forward_maps(x, classes), batched, 1e-5)


def test_start_block_defaults_to_last_half_of_the_blocks():
    adapter = GETAMAdapter(5, "vit_tiny_demo")
    adapter.build()
    assert adapter.start_block == 2  # 4 blocks -> blocks 2, 3
    with pytest.raises(WsssBenchError, match="start_block"):
        GETAMAdapter(5, "vit_tiny_demo", hparams={"start_block": 4}).build()


def test_token_map_formula_on_a_hand_worked_case():
    # one block, two heads, N = 2 tokens (class + 1 patch)
    a = torch.tensor([[[[0.5, 0.5], [0.1, 0.9]], [[0.2, 0.8], [0.3, 0.7]]]])
    g = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[-1.0, 0.5], [0.0, 0.0]]]])
    # entry (0, 1): mean_h relu(g*a) = (1.0 + 0.4) / 2 = 0.7; mean_h relu(g) = (2 + 0.5) / 2 = 1.25
    out = getam_token_map([a], [g], num_prefix=1)
    torch.testing.assert_close(out, torch.tensor([[0.7 * 1.25]]))


def test_no_memory_growth_over_50_images_and_nothing_kept_between_calls():
    torch.manual_seed(0)
    adapter = GETAMAdapter(5, "vit_tiny_demo")
    adapter.build()
    vit = adapter.model.pretrained.model
    refs: list[weakref.ref] = []
    probe = vit.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    x = torch.randn(1, 3, 32, 32)
    classes = torch.tensor([1, 3])
    for _ in range(5):  # warm-up (allocator caches, lazy imports)
        adapter.forward_maps(x, classes)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(50):
        adapter.forward_maps(x, classes)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    probe.remove()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, f"python memory grew by {growth} bytes over 50 images"
    assert len(refs) == 55 and all(r() is None for r in refs)  # no attention tensor (or graph) survives
    assert all(p.grad is None for p in adapter.model.parameters())
    assert not any(blk.attn.attn_drop._forward_hooks for blk in vit.blocks)


def test_filter_strips_module_prefix_and_ignores_decoder_and_imagenet_head():
    shapes, ignored = getam_official_layout(num_classes=3, dim=8, depth=1, grid=2)
    sd = {"module." + k: torch.zeros(s) for k, s in shapes.items()}
    out = filter_getam_checkpoint(sd)
    assert set(out) == set(shapes) - ignored
    with pytest.raises(WsssBenchError, match="cls_head"):
        filter_getam_checkpoint({"pretrained.model.cls_token": torch.zeros(1, 1, 8)})


def test_wrong_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    shapes, _ = getam_official_layout(num_classes=5, dim=64, depth=3, grid=14)
    path = save(random_state(shapes), tmp_path / "short.pth")
    with pytest.raises(WsssBenchError, match="short.pth.*missing keys: pretrained.model.blocks.3"):
        GETAMAdapter(5, "vit_tiny_demo").load_checkpoint(path)


def test_hybrid_backbone_builds_and_batches(monkeypatch):
    monkeypatch.setitem(vit_mod.VIT_SPECS, "hybrid_test", ViTSpec(
        "vit_base_r50_s16_384", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64}))

    class Small(GETAMAdapter):
        backbones = ("hybrid_test",)
    adapter = Small(4)
    adapter.build()
    keys = adapter.model.state_dict()
    assert "pretrained.model.patch_embed.backbone.stem.conv.weight" in keys
    x = torch.randn(1, 3, 64, 80)
    both = adapter.forward_maps(x, torch.tensor([0, 3]))
    one = adapter.forward_maps(x, torch.tensor([3]))
    assert both.shape == (1, 2, 64, 80)
    assert_close_relative(both[:, 1:], one, 1e-5)


def test_bf16_autocast_gives_float32_maps_close_to_fp32():
    torch.manual_seed(0)
    adapter = GETAMAdapter(5, "vit_tiny_demo")
    adapter.build()
    with torch.no_grad():
        adapter.model.cls_head.weight.mul_(1000)
    x = torch.randn(1, 3, 64, 64)
    ref = adapter.forward_maps(x, torch.tensor([1, 2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = adapter.forward_maps(x, torch.tensor([1, 2]))
    assert low.dtype == torch.float32
    assert_close_relative(low, ref, 5e-2)


def test_hybrid_official_layout_names_and_shapes_match_the_model():
    from vit_reference import resnetv2_r50_hybrid_layout

    from wsss_bench.methods.getam import GETAMNet
    shapes, ignored = getam_official_layout(num_classes=20)
    shapes["pretrained.model.patch_embed.proj.weight"] = (768, 1024, 1, 1)
    shapes.update(resnetv2_r50_hybrid_layout("pretrained.model.patch_embed.backbone."))
    with torch.device("meta"):
        net = GETAMNet("vit_hybrid", 20)
    state = filter_getam_checkpoint({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in state.items()}
    assert set(state) == set(shapes) - ignored


def test_demo_hybrid_has_the_hybrid_key_layout_and_an_eight_pixel_token_grid():
    from wsss_bench.methods.backbones.vit import patch_tokens

    adapter = GETAMAdapter(5, "vit_hybrid_demo")
    adapter.build()
    keys = adapter.model.state_dict()
    assert "pretrained.model.patch_embed.backbone.stem.conv.weight" in keys  # timm's R50+ViT names
    assert "pretrained.model.patch_embed.proj.weight" in keys
    tokens, grid = patch_tokens(adapter.model.pretrained.model, torch.randn(1, 3, 96, 112))
    assert grid == (12, 14) and tokens.shape == (1, 12 * 14, 64)
    maps = adapter.forward_maps(torch.randn(2, 3, 96, 112), torch.tensor([1, 4]))
    assert maps.shape == (2, 2, 96, 112) and torch.isfinite(maps).all()


def test_filter_ignores_only_the_named_training_only_modules(tmp_path):
    shapes, ignored = getam_official_layout(num_classes=5, dim=64, depth=4, grid=14)
    assert {k.split(".")[0] for k in ignored} == {"pretrained", "scratch", "cam_module"}
    sd = random_state(shapes)
    sd["pretrained.model.blocks.0.attn.extra"] = torch.zeros(3)  # unknown: not dropped silently
    sd["decoder.conv.weight"] = torch.zeros(2)  # not a GETAM module at all
    sd["pretrained.act_postprocess5.3.weight"] = torch.zeros(2)
    out = filter_getam_checkpoint(sd)
    assert {"pretrained.model.blocks.0.attn.extra", "decoder.conv.weight",
            "pretrained.act_postprocess5.3.weight"} <= set(out)
    assert not set(out) & ignored
    path = save(sd, tmp_path / "extra.pth")
    with pytest.raises(WsssBenchError, match=r"extra\.pth.*unexpected keys: .*blocks\.0\.attn\.extra"):
        GETAMAdapter(5, "vit_tiny_demo").load_checkpoint(path)
    # a prefix on only some keys is not stripped: those keys are then unknown
    mixed = {("module." + k if k.startswith("pretrained.model.norm.") else k): v
             for k, v in random_state(shapes).items()}
    with pytest.raises(WsssBenchError, match="unexpected keys: module.pretrained.model.norm"):
        GETAMAdapter(5, "vit_tiny_demo").load_checkpoint(save(mixed, tmp_path / "mixed.pth"))


def test_native_settings_are_getams_crop_its_normalisation_and_power_rule():
    from wsss_bench.demo.train import DEMO_MODELS

    n = GETAMAdapter(5, "vit_hybrid").native
    assert (n.scales, n.flip, n.input_size, n.input_resize, n.resize, n.fuse_at) == (
        (1.0,), False, 256, "bilinear", "bilinear", "input")
    assert (n.align_corners, n.normalization, n.eps) == (True, NATIVE_NORMALIZATION, 1e-5)
    assert NATIVE_NORMALIZATION == ("none" if "none" in NORMALIZATIONS else "max")
    assert (n.background.rule, n.background.value) == ("power", 32)
    assert GETAMAdapter.native == n  # the class attribute shows the default
    # the demo backbones' training crop is the side the demo trains them at
    assert GETAMAdapter(5, "vit_hybrid_demo").native.input_size == DEMO_MODELS["getam"].train_size == 96
    assert GETAMAdapter(5, "vit_tiny_demo").native.input_size == 96
    own = GETAMAdapter(5, "vit_tiny_demo", {"crop_size": 0}).native
    assert own.input_size is None and own.fuse_at == "image" and own.background == n.background
    assert GETAMAdapter(5, "vit_hybrid", {"crop_size": "128"}).native.input_size == 128
    with pytest.raises(WsssBenchError, match="crop_size"):
        GETAMAdapter(5, "vit_tiny_demo", {"crop_size": -2})


def test_each_map_is_divided_by_its_max_plus_epsilon_once():
    """GETAM's normalisation is the adapter's; with a weak random head the maxima are below the epsilon,
    so the normalised maps stay well under 1 (as in the official code)."""
    torch.manual_seed(0)
    adapter = GETAMAdapter(5, "vit_tiny_demo", {"start_block": 0})
    adapter.build()
    x = torch.randn(1, 3, 64, 64)
    maps = adapter.forward_maps(x, torch.tensor([1, 2]))
    raw = reference_getam(adapter.model.state_dict(), x, [1, 2], heads=2, start=0, n_tokens=1)
    assert raw.amax() < 1e-5 and 0 < maps.amax() < 0.5
    assert_close_relative(maps, normalised(raw))
