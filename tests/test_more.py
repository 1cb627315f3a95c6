"""MoRe adapter: official checkpoint layout, LAM and CAM against a step-by-step forward in plain torch.

The expected key names and shapes (in more_official_layout.py) are written out from zwyang6/MoRe ``model/model_mal.py``
(``network``), ``model/GCA.py`` (``graphic_cls_aggregation``), ``model/decoder/conv_head.py``
(``LargeFOV``) and ``model/backbone/mat_vit.py`` / ``vit.py`` (``MATformer``, timm-style ViT with a
``head`` Linear over ``num_attri`` outputs).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from more_official_layout import official_layout, random_checkpoint, ref_maps, strip

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS, MultiClassTokenViT, resize_patch_pos_embed
from wsss_bench.methods.more import MoReAdapter

#: The demo/test encoder size (its dims are read, not assumed, so the tests follow the config).
TINY = VIT_MCT_CONFIGS["vit_tiny_demo"]


CASES = [  # (dataset layout, foreground classes, backbone, input size)
    ("voc", 20, "vit_base_patch16", (64, 64)),
    ("voc", 20, "vit_tiny_demo", (96, 80)),
    ("coco", 80, "vit_tiny_demo", (64, 64)),
    ("coco", 80, "vit_tiny_demo", (224, 224)),  # the native grid: no position-embedding resize
]


@pytest.mark.parametrize("layout,num_fg,backbone,size", CASES)
def test_official_checkpoint_loads_strictly_and_maps_match_stepwise_forward(tmp_path, layout, num_fg, backbone,
                                                                            size):
    cfg = VIT_MCT_CONFIGS[backbone]
    state = random_checkpoint(official_layout(num_fg, cfg.embed_dim, cfg.depth), seed=num_fg)
    path = tmp_path / "model_iter.pth"
    torch.save(state, path)
    sd = strip(state)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_lam, ref_cam = ref_maps(sd, x, cfg.depth, cfg.num_heads, num_fg)
    assert ref_lam.shape == (2, num_fg, size[0] // 16, size[1] // 16)
    assert (ref_lam < 0).any(), "the raw LAM is expected to take negative values"
    classes = torch.tensor([0, 3, num_fg - 1])
    lam_adapter = MoReAdapter(num_fg, backbone, {"map": "lam"})
    assert lam_adapter.load_checkpoint(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lam_adapter.model.encoder.num_tokens == 4 + num_fg
    cam_adapter = MoReAdapter(num_fg, backbone, {"map": "cam"})
    cam_adapter.model = lam_adapter.model  # the same loaded network (a ViT-B is slow to build twice)
    ref_cam = F.interpolate(ref_cam, size=size, mode="bilinear", align_corners=False).clamp(min=0)
    for adapter, ref in ((lam_adapter, ref_lam), (cam_adapter, ref_cam)):
        with torch.no_grad():
            out = adapter.forward_maps(x, classes)
            if adapter is cam_adapter:  # the raw grid CAM; the runner upsamples, then activate() (ReLU)
                out = adapter.activate(F.interpolate(out, size=size, mode="bilinear", align_corners=False))
        assert out.shape == (2, 3, *ref.shape[-2:])
        scale = ref.abs().max()
        torch.testing.assert_close(out / scale, ref[:, classes] / scale, atol=1e-4, rtol=0)


def test_lam_is_not_clamped_and_cam_is_relu(tmp_path):
    state = random_checkpoint(official_layout(20, TINY.embed_dim, TINY.depth), seed=3)
    torch.save(state, tmp_path / "m.pth")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    lam_adapter = MoReAdapter(20, "vit_tiny_demo")
    cam_adapter = MoReAdapter(20, "vit_tiny_demo", {"map": "cam"})
    for a in (lam_adapter, cam_adapter):
        a.load_checkpoint(str(tmp_path / "m.pth"))
    classes = torch.arange(20)
    with torch.no_grad():
        lam = lam_adapter.forward_maps(x, classes)
        cam = cam_adapter.forward_maps(x, classes)
        raw_cam = F.conv2d(cam_adapter.model.features(x)[1], cam_adapter.model.classifier.weight)
    assert (lam < 0).any() and (lam > 0).any()
    assert torch.equal(lam_adapter.activate(lam), lam)  # the LAM is never clamped
    assert (raw_cam < 0).any()
    torch.testing.assert_close(cam, raw_cam, atol=1e-6, rtol=0)  # the raw grid CAM
    # the runner upsamples to the fusion size, then activate() applies the ReLU (not the other way
    # round), as multi_scale_cam2 orders it
    up = F.interpolate(raw_cam, size=(48, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam_adapter.activate(up), up.clamp(min=0), atol=0, rtol=0)
    relu_first = F.interpolate(raw_cam.clamp(min=0), size=(48, 48), mode="bilinear", align_corners=False)
    assert not torch.allclose(cam_adapter.activate(up), relu_first, atol=1e-3)


def test_checkpoint_without_module_prefix_loads(tmp_path):
    state = strip(random_checkpoint(official_layout(20, TINY.embed_dim, TINY.depth), seed=4))
    torch.save(state, tmp_path / "plain.pth")
    adapter = MoReAdapter(20, "vit_tiny_demo")
    adapter.load_checkpoint(str(tmp_path / "plain.pth"))
    assert torch.equal(adapter.model.graph_layer.head_proj.weight, state["graph_layer.head_proj.weight"])
    assert torch.equal(adapter.model.encoder.pos_embed, state["encoder.pos_embed"])


@pytest.mark.parametrize("drop,add,needle", [
    ("module.graph_layer.linear2.bias", None, "missing keys: graph_layer.linear2.bias"),
    (None, "module.encoder.extra.weight", "unexpected keys: encoder.extra.weight"),
])
def test_checkpoint_layout_errors_name_the_key_and_file(tmp_path, drop, add, needle):
    state = random_checkpoint(official_layout(20, TINY.embed_dim, TINY.depth), seed=5)
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WsssBenchError) as err:
        MoReAdapter(20, "vit_tiny_demo").load_checkpoint(str(path))
    assert needle in str(err.value) and "bad.pth" in str(err.value)


def test_voc_checkpoint_does_not_fit_coco_adapter(tmp_path):
    torch.save(random_checkpoint(official_layout(20, TINY.embed_dim, TINY.depth), seed=6), tmp_path / "voc.pth")
    with pytest.raises(WsssBenchError, match="shape mismatch: encoder.cls_token"):
        MoReAdapter(80, "vit_tiny_demo").load_checkpoint(str(tmp_path / "voc.pth"))


def test_pos_embed_resize_matches_hand_computed_bicubic_rule():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 14 * 14, 8, generator=g)
    # native grid, square input: unchanged (the official shortcut)
    assert resize_patch_pos_embed(pos, (14, 14), (14, 14)) is pos
    # native grid, non-square input: resized with scale (14.1 / 14), not the identity
    same = resize_patch_pos_embed(pos, (14, 14), (14, 14), input_square=False)
    assert same.shape == pos.shape and not torch.allclose(same, pos)
    # 28 x 20 grid: PyTorch's bicubic with the given scale factor, from the source coordinates by hand
    out = resize_patch_pos_embed(pos, (14, 14), (28, 20))
    assert out.shape == (1, 28 * 20, 8)
    grid = pos.reshape(14, 14, 8)

    def cubic(t: float) -> list[float]:  # Keys kernel, a = -0.75 (PyTorch's bicubic)
        a = -0.75
        def k(d: float) -> float:
            d = abs(d)
            if d <= 1:
                return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
            if d < 2:
                return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
            return 0.0
        f = t - math.floor(t)
        return [k(1 + f), k(f), k(1 - f), k(2 - f)]

    def sample(i: int, j: int) -> torch.Tensor:
        si, sj = (i + 0.5) / (28.1 / 14) - 0.5, (j + 0.5) / (20.1 / 14) - 0.5
        wi, wj = cubic(si), cubic(sj)
        acc = torch.zeros(8)
        for a in range(4):
            for b in range(4):
                ii = min(max(math.floor(si) - 1 + a, 0), 13)
                jj = min(max(math.floor(sj) - 1 + b, 0), 13)
                acc += wi[a] * wj[b] * grid[ii, jj]
        return acc

    got = out.reshape(28, 20, 8)
    for i, j in [(0, 0), (5, 7), (27, 19), (13, 10)]:
        torch.testing.assert_close(got[i, j], sample(i, j), atol=1e-5, rtol=1e-5)


def test_views_of_a_batch_do_not_interact():
    torch.manual_seed(0)
    adapter = MoReAdapter(20, "vit_tiny_demo")
    adapter.build()
    x = torch.randn(3, 3, 64, 64)
    classes = torch.tensor([1, 2])
    with torch.no_grad():
        together = adapter.forward_maps(x, classes)
        alone = torch.cat([adapter.forward_maps(x[i:i + 1], classes) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_native_settings_and_bad_hyperparameters():
    n = MoReAdapter.native
    assert (n.scales, n.flip, n.flip_fusion, n.scale_fusion, n.normalization, n.eps, n.input_size) == (
        (1.0,), True, "max", "sum", "minmax", 1e-5, 448)
    assert (n.resize, n.input_resize, n.size_rounding, n.fuse_at) == ("bilinear", "bilinear", "floor", "input")
    assert n.background.rule == "constant" and n.background.value == 0.5
    assert MoReAdapter.backbones[0] == "vit_base_patch16"
    with pytest.raises(WsssBenchError, match="map must be one of"):
        MoReAdapter(20, "vit_tiny_demo", {"map": "attention"})
    with pytest.raises(WsssBenchError, match="no backbone"):
        MoReAdapter(20, "vit_huge")


def test_multi_class_token_vit_splits_tokens_and_grid():
    vit = MultiClassTokenViT(7, TINY).eval()
    with torch.no_grad():
        cls, patches, grid = vit(torch.randn(1, 3, 50, 70))
    assert cls.shape == (1, 7, TINY.embed_dim) and grid == (3, 4) and patches.shape == (1, 12, TINY.embed_dim)


def official_multi_scale(maps_fn, inputs: torch.Tensor, relu: bool) -> torch.Tensor:
    """``utils/camutils.py`` ``multi_scale_lam2`` (relu=False) / ``multi_scale_cam2`` (relu=True), scale 1.0."""
    b, _, h, w = inputs.shape
    m = maps_fn(torch.cat([inputs, inputs.flip(-1)], dim=0))
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    m = torch.max(m[:b], m[b:].flip(-1))
    if relu:
        m = F.relu(m)
    m = m + F.adaptive_max_pool2d(-m, (1, 1))
    return m / (F.adaptive_max_pool2d(m, (1, 1)) + 1e-5)


@pytest.mark.parametrize("map_name", ["lam", "cam"])
def test_runner_with_native_settings_reproduces_official_multi_scale_inference(map_name):
    from wsss_bench.data.base import Sample
    from wsss_bench.inference import compute_maps
    from wsss_bench.inference.tta import normalise_image

    torch.manual_seed(0)
    adapter = MoReAdapter(20, "vit_tiny_demo", {"map": map_name})
    model = adapter.build()
    rng = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (64, 64, 3), generator=rng, dtype=torch.uint8).numpy()
    labels = torch.zeros(20).numpy()
    labels[[2, 11, 14]] = 1
    # input_size equal to the image size, so that the runner's resize (its business) is a no-op
    settings = MoReAdapter.native.replace(input_size=64)
    with torch.no_grad():
        (got,) = compute_maps(adapter, [Sample("a", image, labels, None)], settings, torch.device("cpu"), "fp32")
        x = normalise_image(torch.from_numpy(image).permute(2, 0, 1)[None].float(), adapter.mean, adapter.std)
        fn = model.lam if map_name == "lam" else model.cam
        want = official_multi_scale(fn, x, relu=map_name == "cam")[0, [2, 11, 14]]
    assert got.shape == (3, 64, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
