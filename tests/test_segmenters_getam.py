"""GETAM's DPT segmentation branch: the official layout loads strictly; logits equal a forward
written here from GETAM's DPT/DPT.py, DPT/blocks.py and DPT/vit.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit import build_vit
from wsss_bench.segmenters.getam_head import GETAM_CRF, GETAMSegmenter
from wsss_bench.segmenters.tta import view_size

D, FEAT, NCLS = 64, 16, 6
WIDTHS = (D // 8, D // 4, D // 2, D)  # [96, 192, 384, 768] for ViT-B


def public_dpt_layout(d=D, features=FEAT, n_classes=NCLS, widths=WIDTHS):
    """Non-ViT keys of ``DPTSegmentationModel.state_dict()`` (ViT/DeiT, readout "project")."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(p, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{p}.{n}"] = (c,)
        keys[f"{p}.num_batches_tracked"] = ()

    for i, w in enumerate(widths, start=1):
        p = f"pretrained.act_postprocess{i}"
        keys[f"{p}.0.project.0.weight"], keys[f"{p}.0.project.0.bias"] = (d, 2 * d), (d,)
        keys[f"{p}.3.weight"], keys[f"{p}.3.bias"] = (w, d, 1, 1), (w,)
        if i == 1:
            keys[f"{p}.4.weight"], keys[f"{p}.4.bias"] = (w, w, 4, 4), (w,)
        if i == 2:
            keys[f"{p}.4.weight"], keys[f"{p}.4.bias"] = (w, w, 2, 2), (w,)
        if i == 4:
            keys[f"{p}.4.weight"], keys[f"{p}.4.bias"] = (w, w, 3, 3), (w,)
        keys[f"scratch.layer{i}_rn.weight"] = (features, w, 3, 3)
        r = f"scratch.refinenet{i}"
        keys[f"{r}.out_conv.weight"], keys[f"{r}.out_conv.bias"] = (features, features, 1, 1), (features,)
        for u in ("resConfUnit1", "resConfUnit2"):
            keys[f"{r}.{u}.conv1.weight"] = keys[f"{r}.{u}.conv2.weight"] = (features, features, 3, 3)
            bn(f"{r}.{u}.bn1", features)
            bn(f"{r}.{u}.bn2", features)
    keys["scratch.output_conv.0.weight"] = (features, features, 3, 3)
    bn("scratch.output_conv.1", features)
    keys["scratch.output_conv.4.weight"], keys["scratch.output_conv.4.bias"] = (n_classes, features, 1, 1), (n_classes,)
    hidden = max(1, features // 16)
    keys["cam_module.fc.0.weight"], keys["cam_module.fc.2.weight"] = (hidden, features), (features, hidden)
    for j in (0, 2):
        keys[f"cam_module.body.{j}.weight"], keys[f"cam_module.body.{j}.bias"] = (features, features, 3, 3), (features,)
    return keys


def official_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    vit = build_vit("vit_tiny_demo")
    state = {f"pretrained.model.{k}": v.clone() + 0.02 * torch.randn(v.shape, generator=g)
             for k, v in vit.state_dict().items()}
    for k, shape in public_dpt_layout().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(3)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.2
    state["cls_head.weight"], state["cls_head.bias"] = torch.randn(NCLS - 1, D), torch.randn(NCLS - 1)
    state["pretrained.model.head.weight"], state["pretrained.model.head.bias"] = torch.randn(1000, D), torch.randn(1000)
    return state


def reference_post(state, i, tokens, grid):
    """``forward_vit``: ``act_postprocess{i}`` (readout projection, unflatten, 1x1 conv, resampling)."""
    gh, gw = grid
    p = f"pretrained.act_postprocess{i}"
    patches = tokens[:, 1:]
    feat = torch.cat([patches, tokens[:, :1].expand_as(patches)], -1)
    feat = F.gelu(F.linear(feat, state[f"{p}.0.project.0.weight"], state[f"{p}.0.project.0.bias"]))
    y = feat.transpose(1, 2).unflatten(2, (gh, gw))
    y = F.conv2d(y, state[f"{p}.3.weight"], state[f"{p}.3.bias"])
    if i == 1:
        y = F.conv_transpose2d(y, state[f"{p}.4.weight"], state[f"{p}.4.bias"], stride=4)
    if i == 2:
        y = F.conv_transpose2d(y, state[f"{p}.4.weight"], state[f"{p}.4.bias"], stride=2)
    if i == 4:
        y = F.conv2d(y, state[f"{p}.4.weight"], state[f"{p}.4.bias"], stride=2, padding=1)
    return y


def reference_dpt_head(state, layers):
    """``DPT.forward_seg`` after ``forward_vit``: ``scratch.layer{i}_rn``, ``refinenet4..1``,
    ``cam_module`` (SELayer), ``scratch.output_conv`` (logits at the input size)."""
    def bn(y, p):
        return F.batch_norm(y, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], False, 0.0, 1e-5)

    def rcu(y, p):
        out = bn(F.conv2d(F.relu(y), state[f"{p}.conv1.weight"], padding=1), f"{p}.bn1")
        out = bn(F.conv2d(F.relu(out), state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        return out + y

    def fusion(i, y, skip=None):
        p = f"scratch.refinenet{i}"
        if skip is not None:
            y = y + rcu(skip, f"{p}.resConfUnit1")
        y = rcu(y, f"{p}.resConfUnit2")
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return F.conv2d(y, state[f"{p}.out_conv.weight"], state[f"{p}.out_conv.bias"])

    rn = [F.conv2d(layer, state[f"scratch.layer{i + 1}_rn.weight"], padding=1) for i, layer in enumerate(layers)]
    path = fusion(4, rn[3])
    path = fusion(3, path, rn[2])
    path = fusion(2, path, rn[1])
    path = fusion(1, path, rn[0])
    body = F.conv2d(F.relu(F.conv2d(path, state["cam_module.body.0.weight"], state["cam_module.body.0.bias"], padding=1)),
                    state["cam_module.body.2.weight"], state["cam_module.body.2.bias"], padding=1)
    gate = torch.sigmoid(F.linear(F.relu(F.linear(body.mean((2, 3)), state["cam_module.fc.0.weight"])),
                                  state["cam_module.fc.2.weight"]))
    path = body * gate[:, :, None, None] + path
    out = F.relu(bn(F.conv2d(path, state["scratch.output_conv.0.weight"], padding=1), "scratch.output_conv.1"))
    out = F.conv2d(out, state["scratch.output_conv.4.weight"], state["scratch.output_conv.4.bias"])
    return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)


def reference_forward(vit, state, x, hooks=(0, 1, 2, 3)):
    """forward_flex + forward_vit + DPT.forward_seg, written from the official files."""
    b, _, h, w = x.shape
    gh, gw = h // 16, w // 16
    tok = F.conv2d(x, state["pretrained.model.patch_embed.proj.weight"],
                   state["pretrained.model.patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    pos = state["pretrained.model.pos_embed"]
    side = int((pos.shape[1] - 1) ** 0.5)
    grid = pos[0, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bilinear").permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    t = torch.cat([state["pretrained.model.cls_token"].expand(b, -1, -1), tok], 1) + torch.cat([pos[:, :1], grid], 1)
    acts = {}
    for i, blk in enumerate(vit.blocks):
        t = blk(t)
        acts[i] = t
    layers = [reference_post(state, i + 1, acts[hk], (gh, gw)) for i, hk in enumerate(hooks)]
    return reference_dpt_head(state, layers)


def tiny(**kw):
    return GETAMSegmenter(NCLS, backbone="vit_tiny_demo", hparams={"features": FEAT, **kw})


def test_dpt_names_and_shapes_equal_the_official_layout():
    seg = tiny()
    own = {k: tuple(v.shape) for k, v in seg.build().state_dict().items()}
    vit_keys = {f"pretrained.model.{k}": tuple(v.shape) for k, v in build_vit("vit_tiny_demo").state_dict().items()}
    assert own == {**vit_keys, **public_dpt_layout()}


def test_official_checkpoint_loads_strictly_and_logits_match_reference(tmp_path):
    state = official_state()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "getam.pth")
    seg = tiny()
    seg.load_checkpoint(str(tmp_path / "getam.pth"))
    seg.model.eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = seg.logits(x)
        ref = reference_forward(seg.model.pretrained.model, state, x)
    assert got.shape == (2, NCLS, 64, 96)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # a size that is not a multiple of 32: zero padding to 64 x 96, logits cropped back
    y = x[:, :, :50, :70]
    with torch.no_grad():
        got = seg.logits(y)
        ref = reference_forward(seg.model.pretrained.model, state, F.pad(y, (0, 26, 0, 14)))[..., :50, :70]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_checkpoint_without_segmentation_branch_is_refused(tmp_path):
    state = {k: v for k, v in official_state().items() if not k.startswith("scratch.")}
    torch.save(state, tmp_path / "cls_only.pth")
    with pytest.raises(WsssBenchError, match="cls_only.pth.*segmentation branch"):
        tiny().load_checkpoint(str(tmp_path / "cls_only.pth"))


def test_native_protocol_is_test_py_sizes_and_crf():
    seg = tiny()
    n = seg.settings("native")
    assert [view_size(375, 500, s, n.input_size) for s in n.scales] == [(256, 256), (320, 320), (480, 480)]
    assert (n.flip, n.fusion, n.resize) == (False, "mean", "opencv-uint8")
    c = seg.settings("native+crf").crf
    assert c == GETAM_CRF and c.iterations == 20 and c.bilateral_sxy == 83
    assert seg.settings("native+crf").crf_image == "BGR"  # test.py passes OpenCV's BGR image to the CRF
