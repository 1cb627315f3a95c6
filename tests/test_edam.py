"""EDAM adapter: checkpoint layout, DA-layer maps, native settings, registration."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
import torch.nn.functional as F
from edam_official_layout import edam_released_keys, edam_training_only_keys, resnet38d_keys

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.base import MethodAdapter, load_strict
from wsss_bench.methods.edam import EDAMAdapter, EDAMNet, backbone_width, filter_edam_checkpoint

NARROW = "resnet38-w0.125"  # every channel count / 8


def _released_state(div: int, n_channels: int = 21, counters: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    keys = edam_released_keys(div, n_channels)
    if not counters:
        keys = [(k, s) for k, s in keys if not k.endswith("num_batches_tracked")]
    state = {}
    for k, s in keys:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(s, generator=g)
        else:
            state[k] = 0.1 * torch.randn(s, generator=g)
    return state


# -- checkpoint ------------------------------------------------------------------------------------

def test_full_width_released_layout_loads_strictly_on_meta():
    with torch.device("meta"):
        model = EDAMNet(num_classes=20, width=1.0)
        state = {k: torch.empty(s) for k, s in edam_released_keys(div=1)}
    assert len(state) == len(edam_released_keys(div=1))
    filtered = filter_edam_checkpoint(state)
    # what inference uses is exactly the official backbone + mask_layer, shapes included
    expected = dict(resnet38d_keys(div=1)) | {"mask_layer.weight": (21, 4096, 3, 3)}
    assert {k: tuple(v.shape) for k, v in filtered.items()} == expected
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    load_strict(model, filtered, "edam.pth", method="edam")


def test_training_only_keys_are_exactly_the_ones_dropped():
    state = _released_state(div=8)
    filtered = filter_edam_checkpoint(state)
    dropped = set(state) - set(filtered)
    assert dropped == {k for k, _ in edam_training_only_keys(div=8)}
    assert all(k.startswith(("d_d.", "embedding.", "trans_list.", "fc_list.")) for k in dropped)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("counters", [True, False])
def test_released_checkpoint_file_loads_strictly_through_the_adapter(tmp_path, suffix, counters):
    state = _released_state(div=8, counters=counters)
    path = tmp_path / f"edam{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    adapter = EDAMAdapter(num_classes=20, backbone=NARROW)
    digest = adapter.load_checkpoint(str(path))
    assert len(digest) == 64
    loaded = adapter.model.state_dict()
    for key in ("conv1a.weight", "b5_1.conv_branch2a.weight", "b7.conv_branch2b2.weight",
                "bn7.running_mean", "mask_layer.weight"):
        assert torch.equal(loaded[key], state[key])


def test_module_prefix_of_a_dataparallel_copy_is_stripped():
    state = {"module." + k: v for k, v in _released_state(div=8).items()}
    model = EDAMNet(num_classes=20, width=0.125)
    load_strict(model, filter_edam_checkpoint(state), "x.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = _released_state(div=8)
    del state["mask_layer.weight"]
    del state["b4_2.bn_branch2b1.running_var"]
    state["classifier.weight"] = torch.zeros(20, 512, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    adapter = EDAMAdapter(num_classes=20, backbone=NARROW)
    with pytest.raises(WsssBenchError) as err:
        adapter.load_checkpoint(str(path))
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "b4_2.bn_branch2b1.running_var" in msg and "mask_layer.weight" in msg
    assert "unexpected keys: classifier.weight" in msg


def test_only_the_four_training_only_modules_are_ignored(tmp_path):
    """Keys that merely resemble a training-only module, or any other extra module, are errors."""
    state = _released_state(div=8)
    state["d_d2.weight"] = torch.zeros(1)
    state["embeddings.weight"] = torch.zeros(1)
    state["cls_head.weight"] = torch.zeros(20, 512, 1, 1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(WsssBenchError) as err:
        EDAMAdapter(num_classes=20, backbone=NARROW).load_checkpoint(str(path))
    msg = str(err.value)
    assert "unexpected keys:" in msg and all(k in msg for k in ("d_d2.weight", "embeddings.weight", "cls_head.weight"))
    assert "missing keys" not in msg


def test_voc_checkpoint_on_a_coco_adapter_is_a_shape_error(tmp_path):
    path = tmp_path / "voc.pth"
    torch.save(_released_state(div=8, n_channels=21), path)
    adapter = EDAMAdapter(num_classes=80, backbone=NARROW)
    with pytest.raises(WsssBenchError, match=r"shape mismatch: mask_layer.weight \(21, 512, 3, 3\) vs \(81, 512, 3, 3\)"):
        adapter.load_checkpoint(str(path))


# -- maps ------------------------------------------------------------------------------------------

def test_da_layer_has_num_classes_plus_one_channels():
    for k in (20, 80, 5):
        model = EDAMAdapter(num_classes=k, backbone="resnet38-w0.0625").build()
        assert tuple(model.mask_layer.weight.shape) == (k + 1, 256, 3, 3)
        assert model.mask_layer.bias is None


def test_maps_equal_conv_then_l2_normalise_then_abs_of_the_features():
    torch.manual_seed(0)
    adapter = EDAMAdapter(num_classes=20, backbone=NARROW)
    model = adapter.build()
    views = torch.randn(2, 3, 40, 56)
    classes = torch.tensor([2, 7, 19])
    with torch.no_grad():
        maps = adapter.forward_maps(views, classes)
        feats = model.features(views)
        w = model.mask_layer.weight  # [21, C, 3, 3]
        # independent: explicit 3x3 convolution as a sum over the 9 taps of 1x1 products
        padded = F.pad(feats, (1, 1, 1, 1))
        h, wd = feats.shape[-2:]
        logits = torch.zeros(2, 21, h, wd)
        for dy in range(3):
            for dx in range(3):
                patch = padded[:, :, dy:dy + h, dx:dx + wd]
                logits += torch.einsum("nchw,kc->nkhw", patch, w[:, :, dy, dx])
        norm = logits.pow(2).sum(dim=1, keepdim=True).sqrt()
        expected = (logits / norm).abs()[:, classes]
    assert maps.shape == (2, 3, 5, 7)
    assert torch.allclose(maps, expected, atol=1e-5)
    assert (maps >= 0).all() and (maps <= 1 + 1e-6).all()


def test_maps_of_all_classes_are_unit_vectors_per_pixel_with_the_unused_channel():
    adapter = EDAMAdapter(num_classes=5, backbone="resnet38-w0.0625")
    adapter.build()
    with torch.no_grad():
        fg = adapter.forward_maps(torch.randn(1, 3, 32, 32), torch.arange(5))
        every = adapter.model(torch.randn(1, 3, 32, 32))
    assert fg.shape[1] == 5 and every.shape[1] == 6
    assert torch.allclose(every.pow(2).sum(dim=1), torch.ones(1, 4, 4), atol=1e-5)


def test_out_of_range_class_is_an_error():
    adapter = EDAMAdapter(num_classes=5, backbone="resnet38-w0.0625")
    with pytest.raises(WsssBenchError, match="class indices must be in 0..4"):
        adapter.forward_maps(torch.randn(1, 3, 16, 16), torch.tensor([5]))


# -- settings, registration ------------------------------------------------------------------------

def test_native_settings_are_edam_infer_cls():
    n = EDAMAdapter.native
    assert n.scales == (1.0, 0.5, 1.5, 2.0)
    assert n.flip and n.flip_fusion == n.scale_fusion == "sum" and n.resize == "pil-bicubic" and n.normalization == "max" and n.eps == 0.0
    assert n.input_size is None and n.align_corners is False
    assert n.background.rule == "constant" and n.background.value == 0.5


def test_theta_sets_the_instance_background_and_width_is_recorded():
    a = EDAMAdapter(num_classes=20, backbone=NARROW, hparams={"theta": 0.45})
    assert a.native.background.value == 0.45 and EDAMAdapter.native.background.value == 0.5
    assert a.hparams == {"theta": 0.45, "width": 0.125}
    b = EDAMAdapter(num_classes=20, backbone=NARROW, hparams={"width": "0.0625"})
    assert b.hparams["width"] == 0.0625
    assert b.build().out_channels == 256
    assert EDAMAdapter(num_classes=20).hparams["width"] == 1.0  # default backbone: the paper's


def test_backbone_names_map_to_widths():
    assert backbone_width("resnet38") == 1.0
    assert backbone_width("resnet38-w0.125") == 0.125
    for bad in ("resnet38-w", "resnet38-wx", "resnet38-w-1", "resnet50"):
        with pytest.raises(WsssBenchError):
            backbone_width(bad)
    assert all(backbone_width(b) > 0 for b in EDAMAdapter.backbones)
    with pytest.raises(WsssBenchError, match="has no backbone"):
        EDAMAdapter(num_classes=20, backbone="resnet38-w0.3")
    with pytest.raises(WsssBenchError, match="theta"):
        EDAMAdapter(num_classes=20, hparams={"theta": 1.5})


def test_entry_point_resolves_to_the_adapter():
    (ep,) = [e for e in entry_points(group="wsss_bench.methods") if e.name == "edam"]
    cls = ep.load()
    assert cls is EDAMAdapter and issubclass(cls, MethodAdapter) and cls.name == "edam"
    assert cls.needs_checkpoint and not cls.needs_grad
    d = EDAMAdapter(num_classes=20, backbone=NARROW).describe()
    assert d["name"] == "edam" and d["native"]["eps"] == 0.0
