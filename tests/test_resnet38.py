"""ResNet-38 (PSA/EDAM ``resnet38d``): names, shapes, output stride, forward, frozen batch norm."""

from __future__ import annotations

import pytest
import torch
from edam_official_layout import resnet38d_forward, resnet38d_keys

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.resnet38 import ResNet38, filter_psa_imagenet
from wsss_bench.methods.base import load_strict


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)


def test_full_width_state_dict_matches_official_resnet38d_names_and_shapes():
    with torch.device("meta"):
        model = ResNet38(width=1.0)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = dict(resnet38d_keys(div=1, counters=True))
    assert len(official) == len(resnet38d_keys(div=1, counters=True))  # no duplicate names
    assert ours == official
    n_params = sum(p.numel() for p in model.parameters())
    expected = sum(torch.Size(s).numel() for k, s in official.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == expected


def test_narrow_width_keeps_names_and_divides_channels():
    model = ResNet38(width=0.125)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == dict(resnet38d_keys(div=8, counters=True))


def test_output_stride_is_8_and_channels_are_4096_times_width():
    model = ResNet38(width=0.0625)
    with torch.no_grad():
        for h, w in [(64, 80), (61, 77), (33, 40)]:
            out = model(torch.randn(1, 3, h, w))
            # conv1a keeps the size; three stride-2 3x3 convs (padding 1): n -> floor((n - 1) / 2) + 1
            eh, ew = h, w
            for _ in range(3):
                eh, ew = (eh - 1) // 2 + 1, (ew - 1) // 2 + 1
            assert out.shape == (1, 256, eh, ew)


@pytest.mark.parametrize("final_relu", [False, True])
def test_forward_equals_step_by_step_official_forward(final_relu):
    torch.manual_seed(0)
    model = ResNet38(width=0.0625, final_relu=final_relu)
    _randomise_bn(model)
    x = torch.randn(2, 3, 48, 56)
    with torch.no_grad():
        ours = model(x)
        ref = resnet38d_forward(model.state_dict(), x, final_relu)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
    if not final_relu:
        assert (ours < 0).any()  # EDAM's variant: no ReLU after bn7


def test_train_mode_keeps_batch_norm_frozen():
    model = ResNet38(width=0.0625)
    _randomise_bn(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    assert model.training
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.b7.dropout_2b1.training
    model(torch.randn(2, 3, 32, 32))
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_psa_imagenet_layout_without_bn_counters_loads_strictly():
    model = ResNet38(width=0.125)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in resnet38d_keys(div=8, counters=False)}
    state["linear1000.weight"] = torch.randn(1000, 512, generator=g)  # ImageNet classifier, dropped
    load_strict(model, filter_psa_imagenet(state), "init.pth")
    loaded = model.state_dict()
    assert torch.equal(loaded["b4_3.conv_branch2a.weight"], state["b4_3.conv_branch2a.weight"])
    assert torch.equal(loaded["bn7.running_var"], state["bn7.running_var"])
    assert int(loaded["b2.bn_branch2a.num_batches_tracked"]) == 0


def test_psa_imagenet_layout_with_wrong_key_names_them():
    model = ResNet38(width=0.125)
    state = {k: torch.zeros(s) for k, s in resnet38d_keys(div=8, counters=False)}
    del state["b6.conv_branch2b2.weight"]
    state["fc8.weight"] = torch.zeros(20, 512, 1, 1)
    with pytest.raises(WsssBenchError) as err:
        load_strict(model, filter_psa_imagenet(state), "init.pth")
    msg = str(err.value)
    assert msg.startswith("init.pth: ")
    assert "missing keys: b6.conv_branch2b2.weight" in msg and "unexpected keys: fc8.weight" in msg


def test_non_positive_width_is_an_error():
    with pytest.raises(WsssBenchError, match="width must be positive"):
        ResNet38(width=0.0)
