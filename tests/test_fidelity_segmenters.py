"""Exact fidelity of the four segmenters' native test protocols (issue 20, items 6 and 10).

Each reference below is the official test procedure written out from the official files (none of
their code is copied), run on random weights with non-trivial normalisation statistics and on
odd-sized uint8 images; the network inside each reference is an independent functional forward on
the state dict (from ``test_segmenters_*.py`` / ``more_official_layout.py``, or written here for the
R50 hybrid). wsss-bench runs the same image through :func:`wsss_bench.segmenters.runner.fused_samples`
(the runner's batch function) under ``settings("native")``. Asserted: max relative difference
``max|ours - official| / max|official|`` of the fused scores <= 1e-4 and identical predictions.

- deeplabv2: kazuto1011/deeplab-pytorch @ 4219467 ``libs/datasets/base.py`` (``cv2.imread`` BGR as float32,
  ``image -= mean_bgr``), ``libs/models/msc.py`` (``MSC.forward``: the image, then
  ``F.interpolate(x, scale_factor=p)`` for p = 0.5, 0.75, logits resized to the scale-1.0 logit size,
  max), ``main.py test`` (upsample to the label size, softmax, argmax).
- deeplabv3plus: VainF/DeepLabV3Plus-Pytorch @ 4e1087d ``main.py`` (``validate``; val transform
  ``ExtToTensor`` + ``ExtNormalize``), ``network/utils.py`` (logits upsampled to the input size),
  ``outputs.max(dim=1)[1]``.
- getam: weixuansun/GETAM ``test.py`` (``cv2.resize`` of the uint8 BGR image to 256/320/480, BGR -> RGB,
  float64 normalisation, logits upsampled to the image, mean of three, argmax); the R50 hybrid's
  trunk with the bundled timm 0.4 weight standardisation ``(w - mean) / (std + 1e-5)``
  (``models/layers/std_conv.py``, ``models/resnetv2.py``).
- more: zwyang6/MoRe @ d733d34 ``datasets/transforms.py normalize_img``, ``tools/infer_seg_voc.py
  _validate`` (``int(448 sc)`` float resize, image + flip summed, max over 1.0/1.25/1.5, argmax).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from more_official_layout import official_layout, random_checkpoint, strip
from PIL import Image
from test_more_segmenter import ref_logits
from test_segmenters_deeplab import (
    deeplabv2_reference,
    public_deeplabv2_layout,
    random_state,
    v3plus_head_reference,
)
from test_segmenters_getam import official_state, reference_dpt_head, reference_forward, reference_post

from wsss_bench.data.base import Sample
from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS
from wsss_bench.segmenters.base import STANDARD_TEST_SETTINGS
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter, DeepLabV3PlusSegmenter
from wsss_bench.segmenters.getam_head import GETAMSegmenter
from wsss_bench.segmenters.more_head import MoReSegmenter
from wsss_bench.segmenters.runner import fused_samples, predict_samples, run_segmentation
from wsss_bench.segmenters.tta import decide, opencv_resize, prepare_views

REL_TOL = 1e-4
SIZES = [(281, 375), (333, 500)]
NCLS = 6


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def odd_image(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with smooth structure and noise (every resampler's worst case is noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(xx[..., None] / (7 + 5 * np.arange(3))) * np.cos(yy[..., None] / (11 + 3 * np.arange(3)))
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def sample(image: np.ndarray) -> Sample:
    return Sample(id="img", image=image, labels=np.zeros(NCLS - 1, np.float32), mask=None)


def ours(seg, image: np.ndarray, which: str = "native") -> tuple[torch.Tensor, torch.Tensor]:
    s = seg.settings(which)
    fused = fused_samples(seg, [sample(image)], s)
    return fused, decide(fused, s)


def check(ours_out, ref_out) -> tuple[float, int]:
    (fused, pred), (ref, ref_pred) = ours_out, ref_out
    assert fused.shape == ref.shape and pred.shape == ref_pred.shape
    return rel_diff(fused, ref), int((pred != ref_pred).sum())


# ------------------------------------------------------------------------------------------------
# DeepLab-v2: kazuto1011/deeplab-pytorch main.py test (MSC)
# ------------------------------------------------------------------------------------------------

V2_BLOCKS, V2_RATES = (1, 1, 1, 1), (6, 12, 18, 24)
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


def kazuto_msc_test(state: dict[str, torch.Tensor], rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    image = np.ascontiguousarray(rgb[..., ::-1]).astype(np.float32)  # cv2.imread(...).astype(np.float32)
    image -= np.array(CAFFE_MEAN_BGR)  # _BaseDataset.__getitem__: a float64 array, in place
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]

    def base(t: torch.Tensor) -> torch.Tensor:
        return deeplabv2_reference(t, state, V2_BLOCKS, V2_RATES)

    logits = base(x)  # MSC.forward
    _, _, H, W = logits.shape
    pyramid = [base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)) for p in (0.5, 0.75)]
    logits_all = [logits] + [F.interpolate(lg, size=(H, W), mode="bilinear", align_corners=False) for lg in pyramid]
    logits = torch.max(torch.stack(logits_all), dim=0)[0]
    logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)  # main.py test
    return logits, torch.argmax(F.softmax(logits, dim=1), dim=1)


@pytest.fixture(scope="module")
def deeplabv2(tmp_path_factory):
    state = random_state(public_deeplabv2_layout(blocks=V2_BLOCKS, width=8, n_classes=NCLS), seed=5)
    path = tmp_path_factory.mktemp("v2") / "deeplabv2.pth"
    torch.save(state, path)
    seg = DeepLabV2Segmenter(NCLS, hparams={"width": 8, "blocks": list(V2_BLOCKS)})
    seg.load_checkpoint(str(path))
    seg.model.eval()
    return seg, state


@pytest.mark.parametrize("size", SIZES)
def test_deeplabv2_native_equals_the_msc_test(deeplabv2, size):
    seg, state = deeplabv2
    img = odd_image(*size, seed=1)
    with torch.no_grad():
        rel, wrong = check(ours(seg, img), kazuto_msc_test(state, img))
    assert rel <= REL_TOL and wrong == 0, (rel, wrong)


def test_deeplabv2_normalisation_is_the_float64_mean_subtraction_bit_for_bit():
    seg = DeepLabV2Segmenter(NCLS, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]  # 1 x 256 x 3 (HxWx3)
    got = seg.normalize(torch.from_numpy(values[None]))[0, :, 0].T.numpy()  # 256 x 3, BGR
    image = values[0][:, ::-1].astype(np.float32)
    image -= np.array(CAFFE_MEAN_BGR)
    np.testing.assert_array_equal(got, image)


# ------------------------------------------------------------------------------------------------
# DeepLab-v3+: VainF/DeepLabV3Plus-Pytorch main.py validate
# ------------------------------------------------------------------------------------------------

V3_RATES = (6, 12, 18)
V3_BLOCKS = (1, 1, 2, 1)
V3 = {"width": 8, "blocks": list(V3_BLOCKS), "decoder_channels": 16, "low_level_channels": 8}


def bn(x, state, p):
    return F.batch_norm(x, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                        state[f"{p}.bias"], training=False, eps=1e-5)


def torchvision_resnet_reference(x, state, blocks, dilate=(False, False, True)):
    """torchvision ``ResNet`` (v1.5 bottleneck, ``replace_stride_with_dilation``) from the state dict:
    returns ``layer1``'s and ``layer4``'s outputs (VainF's ``IntermediateLayerGetter``)."""
    p = "backbone."
    h = F.relu(bn(F.conv2d(x, state[p + "conv1.weight"], None, 2, 3), state, p + "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    dilation, low = 1, None
    for i, n in enumerate(blocks):
        stride, previous = (1 if i == 0 else 2), dilation
        if i > 0 and dilate[i - 1]:
            dilation, stride = dilation * stride, 1
        for j in range(n):
            q = f"{p}layer{i + 1}.{j}."
            d = previous if j == 0 else dilation
            y = F.relu(bn(F.conv2d(h, state[q + "conv1.weight"]), state, q + "bn1"))
            y = F.relu(bn(F.conv2d(y, state[q + "conv2.weight"], None, stride if j == 0 else 1, d, d), state, q + "bn2"))
            y = bn(F.conv2d(y, state[q + "conv3.weight"]), state, q + "bn3")
            sc = h
            if q + "downsample.0.weight" in state:
                sc = bn(F.conv2d(h, state[q + "downsample.0.weight"], None, stride), state, q + "downsample.1")
            h = F.relu(y + sc)
        if i == 0:
            low = h
    return low, h


@pytest.fixture(scope="module")
def deeplabv3plus(tmp_path_factory):
    seg = DeepLabV3PlusSegmenter(NCLS, hparams=V3)
    layout = {k: tuple(v.shape) for k, v in seg.build().state_dict().items()}
    state = random_state(layout, seed=6)
    path = tmp_path_factory.mktemp("v3") / "best.pth"
    torch.save({"cur_itrs": 3, "model_state": state}, path)  # VainF's training checkpoint
    seg.load_checkpoint(str(path))
    seg.model.eval()
    return seg, state


def vainf_validate(state, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = TF.normalize(TF.to_tensor(Image.fromarray(rgb)), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    low, high = torchvision_resnet_reference(x[None], state, V3_BLOCKS)
    outputs = v3plus_head_reference(low, high, state, V3_RATES, x.shape[-2:])
    return outputs, outputs.detach().max(dim=1)[1]


@pytest.mark.parametrize("size", SIZES)
def test_deeplabv3plus_native_equals_vainf_validate(deeplabv3plus, size):
    seg, state = deeplabv3plus
    img = odd_image(*size, seed=2)
    with torch.no_grad():
        rel, wrong = check(ours(seg, img), vainf_validate(state, img))
    assert rel <= REL_TOL and wrong == 0, (rel, wrong)


# ------------------------------------------------------------------------------------------------
# MoRe: zwyang6/MoRe tools/infer_seg_voc.py _validate
# ------------------------------------------------------------------------------------------------

MORE_TINY = VIT_MCT_CONFIGS["vit_tiny_demo"]
MORE_WIDTH = 32  # LargeFOV's 512 channels, narrowed (the decoder_width hyper-parameter) to keep the test fast


@pytest.fixture(scope="module")
def more(tmp_path_factory):
    layout = official_layout(NCLS - 1, MORE_TINY.embed_dim, MORE_TINY.depth)
    layout["decoder.conv6.weight"] = (MORE_WIDTH, MORE_TINY.embed_dim, 3, 3)
    layout["decoder.conv7.weight"] = (MORE_WIDTH, MORE_WIDTH, 3, 3)
    layout["decoder.conv8.weight"] = (NCLS, MORE_WIDTH, 1, 1)
    state = random_checkpoint(layout, seed=7)
    path = tmp_path_factory.mktemp("more") / "more.pth"
    torch.save(state, path)
    seg = MoReSegmenter(NCLS, "vit_tiny_demo", hparams={"decoder_width": MORE_WIDTH})
    seg.load_checkpoint(str(path))
    seg.model.eval()
    return seg, strip(state)


def more_infer_seg(sd, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # normalize_img
    imgarr = np.asarray(rgb)
    proc_img = np.empty_like(imgarr, np.float32)
    for c in range(3):
        proc_img[..., c] = (imgarr[..., c] - mean[c]) / std[c]
    inputs = torch.from_numpy(np.transpose(proc_img, (2, 0, 1)).copy())[None]  # the DataLoader's batch of one
    seg_list = []
    for sc in (1.0, 1.25, 1.5):
        _h, _w = int(448 * sc), int(448 * sc)
        _inputs = F.interpolate(inputs, size=[_h, _w], mode="bilinear", align_corners=False)
        inputs_cat = torch.cat([_inputs, _inputs.flip(-1)], dim=0)
        segs = ref_logits(sd, inputs_cat, MORE_TINY.depth, MORE_TINY.num_heads, NCLS - 1)
        segs = F.interpolate(segs, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        seg_list.append(segs[:1, ...] + segs[1:, ...].flip(-1))
    seg = torch.max(torch.stack(seg_list, dim=0), dim=0)[0]
    return seg, torch.argmax(seg, dim=1)


@pytest.mark.parametrize("size", SIZES)
def test_more_native_equals_infer_seg_voc(more, size):
    seg, sd = more
    img = odd_image(*size, seed=3)
    with torch.no_grad():
        rel, wrong = check(ours(seg, img), more_infer_seg(sd, img))
    assert rel <= REL_TOL and wrong == 0, (rel, wrong)


# ------------------------------------------------------------------------------------------------
# GETAM: weixuansun/GETAM test.py (ViT and the R50 hybrid)
# ------------------------------------------------------------------------------------------------

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def getam_test_py(forward, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    img_temp = np.ascontiguousarray(rgb[..., ::-1])  # cv2.imread: uint8 BGR
    h, w, _ = img_temp.shape
    output_list = []
    for test_size in [256, 320, 480]:
        img_input = cv2.resize(img_temp, (test_size, test_size))
        img_input = cv2.cvtColor(img_input, cv2.COLOR_BGR2RGB).astype(np.float64)
        for c in range(3):
            img_input[:, :, c] = (img_input[:, :, c] / 255. - IMAGENET[0][c]) / IMAGENET[1][c]
        x = torch.from_numpy(img_input[np.newaxis, :].transpose(0, 3, 1, 2)).float()
        output = F.interpolate(forward(x), (h, w), mode="bilinear", align_corners=False)
        output_list.append(output)
    output = (output_list[0] + output_list[1] + output_list[2]) / 3
    return output, torch.argmax(output, dim=1)


@pytest.fixture(scope="module")
def getam_vit(tmp_path_factory):
    state = official_state(seed=8)
    path = tmp_path_factory.mktemp("getam") / "getam.pth"
    torch.save(state, path)
    seg = GETAMSegmenter(NCLS, backbone="vit_tiny_demo", hparams={"features": 16})
    seg.load_checkpoint(str(path))
    seg.model.eval()
    return seg, state


@pytest.mark.parametrize("size", SIZES)
def test_getam_vit_native_equals_test_py(getam_vit, size):
    seg, state = getam_vit
    img = odd_image(*size, seed=4)
    with torch.no_grad():
        rel, wrong = check(ours(seg, img), getam_test_py(
            lambda x: reference_forward(seg.model.pretrained.model, state, x), img))
    assert rel <= REL_TOL and wrong == 0, (rel, wrong)


def test_opencv_views_are_test_py_resizes_of_the_bgr_image():
    """The views made in the loader workers equal test.py's cv2.resize of the BGR image, channels
    swapped back (OpenCV resamples each channel alone)."""
    img = odd_image(281, 375, seed=9)
    views = prepare_views(img, GETAMSegmenter.native)
    assert [v.shape for v in views] == [(256, 256, 3), (320, 320, 3), (480, 480, 3)]
    bgr = np.ascontiguousarray(img[..., ::-1])
    for v, n in zip(views, (256, 320, 480), strict=True):
        assert v.dtype == np.uint8
        np.testing.assert_array_equal(v, cv2.cvtColor(cv2.resize(bgr, (n, n)), cv2.COLOR_BGR2RGB))
    assert opencv_resize(img, img.shape[:2]) is img
    assert prepare_views(img, STANDARD_TEST_SETTINGS) is None


def test_getam_and_more_normalisation_equal_their_numpy_float64_arithmetic():
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]
    g = GETAMSegmenter(NCLS, backbone="vit_tiny_demo", hparams={"features": 16})
    got = g.normalize(torch.from_numpy(values[None]))[0, :, 0].T.numpy()
    want = values[0].astype(np.float64)
    for c in range(3):
        want[:, c] = (want[:, c] / 255. - IMAGENET[0][c]) / IMAGENET[1][c]
    np.testing.assert_array_equal(got, want.astype(np.float32))
    m = MoReSegmenter(NCLS, "vit_tiny_demo")
    got = m.normalize(torch.from_numpy(values[None]))[0, :, 0].T.numpy()
    want = np.empty((256, 3), np.float32)
    for c, (mu, sd) in enumerate(zip([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], strict=True)):
        want[:, c] = (values[0][:, c] - mu) / sd
    np.testing.assert_array_equal(got, want)


# -- the R50 + ViT hybrid: trunk, embedding and blocks written from GETAM's bundled timm 0.4 -------------

HYBRID_SPEC = {"embed_dim": 64, "depth": 4, "num_heads": 2}  # ViT-B's 768/12/12, narrowed for speed
HYBRID_STAGE_BLOCKS = (1, 1, 1)  # R50's (3, 4, 9), shortened for speed (channels 256/512/1024 kept)


def tf_same_pad(x, k, s, value=0.0):
    """timm 0.4 ``pad_same``: TF 'SAME' padding, the odd pixel at the bottom/right."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)


def std_conv_04(x, w, stride):
    """timm 0.4 ``StdConv2dSame``: ``(w - mean) / (std + 1e-5)`` (biased std), SAME padding."""
    std, mean = torch.std_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return F.conv2d(tf_same_pad(x, w.shape[-1], stride), (w - mean) / (std + 1e-5), None, stride)


def group_norm(x, state, p, act=True):
    """timm 0.4 ``GroupNormAct`` (32 groups, eps 1e-5, ReLU)."""
    y = F.group_norm(x, 32, state[f"{p}.weight"], state[f"{p}.bias"], 1e-5)
    return F.relu(y) if act else y


def hybrid_trunk_reference(state, x):
    """timm 0.4 ``ResNetV2(preact=False, stem_type='same', conv_layer=StdConv2dSame)``: every stage's output."""
    p = "pretrained.model.patch_embed.backbone."
    h = group_norm(std_conv_04(x, state[p + "stem.conv.weight"], 2), state, p + "stem.norm")
    h = F.max_pool2d(tf_same_pad(h, 3, 2, value=-math.inf), 3, 2)  # MaxPool2dSame
    stages = sorted({int(k[len(p):].split(".")[1]) for k in state if k.startswith(p + "stages.")})
    outs = []
    for s in stages:
        at = f"{p}stages.{s}.blocks."
        blocks = sorted({int(k[len(at):].split(".")[0]) for k in state if k.startswith(at)})
        for j in blocks:
            q = f"{p}stages.{s}.blocks.{j}."
            stride = (1 if s == 0 else 2) if j == 0 else 1  # Bottleneck: the stride on conv2
            sc = h
            if q + "downsample.conv.weight" in state:
                sc = group_norm(std_conv_04(h, state[q + "downsample.conv.weight"], stride), state,
                                q + "downsample.norm", act=False)
            y = group_norm(std_conv_04(h, state[q + "conv1.weight"], 1), state, q + "norm1")
            y = group_norm(std_conv_04(y, state[q + "conv2.weight"], stride), state, q + "norm2")
            y = group_norm(std_conv_04(y, state[q + "conv3.weight"], 1), state, q + "norm3", act=False)
            h = F.relu(y + sc)
        outs.append(h)
    return outs


def vit_blocks_reference(state, t, heads, prefix="pretrained.model."):
    """timm 0.4 ``Block``s (LayerNorm eps 1e-6): every block's output."""
    d = t.shape[-1]
    depth = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "blocks.")})
    outs = []
    for i in range(depth):
        def w(name, i=i):
            return state[f"{prefix}blocks.{i}.{name}"]
        b, n, _ = t.shape
        y = F.layer_norm(t, (d,), w("norm1.weight"), w("norm1.bias"), 1e-6)
        q, k, v = (F.linear(y, w("attn.qkv.weight"), w("attn.qkv.bias"))
                   .reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4))
        attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
        t = t + F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), w("attn.proj.weight"), w("attn.proj.bias"))
        y = F.layer_norm(t, (d,), w("norm2.weight"), w("norm2.bias"), 1e-6)
        t = t + F.linear(F.gelu(F.linear(y, w("mlp.fc1.weight"), w("mlp.fc1.bias"))), w("mlp.fc2.weight"),
                         w("mlp.fc2.bias"))
        outs.append(t)
    return outs


def hybrid_dpt_reference(state, x, heads, hooks=(2, 3)):
    """``forward_flex`` (hybrid) + ``forward_vit`` + ``DPT.forward_seg`` (hooks: the blocks read as layers 3, 4)."""
    pm = "pretrained.model."
    l1, l2, feat = hybrid_trunk_reference(state, x)
    feat = F.conv2d(feat, state[pm + "patch_embed.proj.weight"], state[pm + "patch_embed.proj.bias"])
    b, d, gh, gw = feat.shape
    assert (gh, gw) == (x.shape[2] // 16, x.shape[3] // 16)
    pos = state[pm + "pos_embed"]
    side = int(math.isqrt(pos.shape[1] - 1))
    grid = F.interpolate(pos[0, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2), size=(gh, gw), mode="bilinear")
    pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], dim=1)
    t = torch.cat([state[pm + "cls_token"].expand(b, -1, -1), feat.flatten(2).transpose(1, 2)], dim=1) + pos
    outs = vit_blocks_reference(state, t, heads)
    layers = [l1, l2, reference_post(state, 3, outs[hooks[0]], (gh, gw)),
              reference_post(state, 4, outs[hooks[1]], (gh, gw))]
    return reference_dpt_head(state, layers)


@pytest.fixture(scope="module")
def getam_hybrid(tmp_path_factory):
    import timm.models.vision_transformer_hybrid as timm_hybrid

    from wsss_bench.methods.backbones import vit as vit_mod

    full = timm_hybrid._resnetv2
    with pytest.MonkeyPatch.context() as mp:
        spec = vit_mod.VIT_SPECS["vit_hybrid"]
        mp.setitem(vit_mod.VIT_SPECS, "vit_hybrid", vit_mod.ViTSpec(spec.timm_name, {**spec.kwargs, **HYBRID_SPEC}))
        mp.setattr(timm_hybrid, "_resnetv2", lambda layers=(3, 4, 9), **kw: full(HYBRID_STAGE_BLOCKS, **kw))
        seg = GETAMSegmenter(NCLS, backbone="vit_hybrid", hparams={"features": 16})
        seg.build()
    g = torch.Generator().manual_seed(11)
    state = {}
    for k, v in seg.model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(3)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            state[k] = torch.randn(v.shape, generator=g) * 0.2
        elif k.startswith("pretrained.model.patch_embed.backbone.") and v.ndim == 4:
            # trained filters differ in scale: per-filter std log-uniform in [1e-3, 1e-1] (where the
            # weight standardisation's epsilon shows: timm 0.4 and 1.x differ most on small filters)
            scale = torch.exp(torch.empty(v.shape[0], 1, 1, 1).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
            state[k] = torch.randn(v.shape, generator=g) * scale
        elif k.startswith("pretrained.model."):  # timm's init (unit norms) plus noise
            state[k] = v + 0.02 * torch.randn(v.shape, generator=g)
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.2
    state["cls_head.weight"], state["cls_head.bias"] = torch.randn(NCLS - 1, 64), torch.randn(NCLS - 1)
    path = tmp_path_factory.mktemp("hybrid") / "getam_hybrid.pth"
    torch.save(state, path)
    seg.load_checkpoint(str(path))
    seg.model.eval()
    img = odd_image(281, 375, seed=12)
    with torch.no_grad():
        ref = getam_test_py(lambda x: hybrid_dpt_reference(state, x, HYBRID_SPEC["num_heads"]), img)
    return seg, img, ref


def test_getam_hybrid_native_equals_test_py(getam_hybrid):
    seg, img, ref = getam_hybrid
    with torch.no_grad():
        rel, wrong = check(ours(seg, img), ref)
    assert rel <= REL_TOL and wrong == 0, (rel, wrong)


def test_runner_with_loader_workers_writes_test_py_predictions(getam_vit, tmp_path):
    """End to end: run_segmentation under native settings (the OpenCV views made in a loader worker)
    writes exactly test.py's predictions."""
    from wsss_bench.data import build_dataset
    from wsss_bench.data.synthetic import generate

    seg, state = getam_vit
    ds = build_dataset("synthetic", generate(tmp_path / "synth", num_images=8, seed=3, size=(37, 53)), "val")
    rec, _ = run_segmentation(seg, ds, "native", workers=1, save_pred=tmp_path / "pred")
    assert rec["settings"]["resize"] == "opencv-uint8" and rec["settings"]["crf_image"] == "BGR"
    for i, image_id in enumerate(ds.ids):
        img = ds[i].image
        with torch.no_grad():
            _, want = getam_test_py(lambda x: reference_forward(seg.model.pretrained.model, state, x), img)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / f"{image_id}.png")), want[0].numpy())
        assert predict_samples(seg, [ds[i]], seg.settings("native"))[0].tolist() == want[0].tolist()


# ------------------------------------------------------------------------------------------------
# shared protocol, CRF image order, checkpoint filters (issue 20 item 10)
# ------------------------------------------------------------------------------------------------

TINY_SEGMENTERS = {
    "deeplabv2": lambda: DeepLabV2Segmenter(NCLS, hparams={"width": 8, "blocks": [1, 1, 1, 1]}),
    "deeplabv3plus": lambda: DeepLabV3PlusSegmenter(NCLS, hparams=V3),
    "getam": lambda: GETAMSegmenter(NCLS, backbone="vit_tiny_demo", hparams={"features": 16}),
    "more": lambda: MoReSegmenter(NCLS, "vit_tiny_demo", hparams={"decoder_width": MORE_WIDTH}),
}


@pytest.mark.parametrize("name", sorted(TINY_SEGMENTERS))
def test_standard_protocol_is_the_same_for_every_segmenter(name):
    seg = TINY_SEGMENTERS[name]()
    assert seg.settings("standard") == STANDARD_TEST_SETTINGS
    assert seg.settings("standard").resize == "float-size"
    assert seg.settings("standard+crf").replace(name="standard", crf=None) == STANDARD_TEST_SETTINGS


def test_native_settings_name_each_official_resize():
    assert DeepLabV2Segmenter.native.resize == "float-scale-factor" and DeepLabV2Segmenter.native.fuse_at == "logits"
    assert GETAMSegmenter.native.resize == "opencv-uint8" and GETAMSegmenter.native.crf_image == "BGR"
    assert MoReSegmenter.native.resize == "float-size" and MoReSegmenter.native.input_size == 448
    assert DeepLabV3PlusSegmenter.native.scales == (1.0,) and DeepLabV3PlusSegmenter.native.fusion == "mean"
    assert [(s.name, s.normalize_dtype) for s in (DeepLabV2Segmenter, DeepLabV3PlusSegmenter, GETAMSegmenter,
                                                  MoReSegmenter)] == \
        [("deeplabv2", "float64"), ("deeplabv3plus", "float32"), ("getam", "float64"), ("more", "float64")]


def test_crf_gets_the_image_in_the_settings_channel_order(monkeypatch):
    import wsss_bench.refine as refine

    seen = []

    def fake_crf(image, probs, params):
        seen.append(np.array(image))
        return np.asarray(probs)

    monkeypatch.setattr(refine, "dense_crf", fake_crf)
    img = odd_image(9, 11, seed=13)
    fused = torch.randn(1, NCLS, 9, 11)
    for order, want in (("RGB", img), ("BGR", img[..., ::-1])):
        s = GETAMSegmenter.native.with_crf().replace(crf_image=order)
        decide(fused, s, [img])
        np.testing.assert_array_equal(seen[-1], want)
    assert GETAMSegmenter(NCLS, backbone="vit_tiny_demo").settings("native+crf").crf_image == "BGR"


def public_state(name: str, seg) -> dict[str, torch.Tensor]:
    """A checkpoint in each segmenter's public layout (prefixes and training-only modules included)."""
    own = {k: v.clone() for k, v in seg.build().state_dict().items()}
    if name == "deeplabv2":
        return {f"module.base.{k}": v for k, v in own.items()}
    if name == "deeplabv3plus":
        return {f"module.{k}": v for k, v in own.items()}
    if name == "getam":
        return {**{f"module.{k}": v for k, v in own.items()}, "module.cls_head.weight": torch.zeros(NCLS - 1, 64),
                "module.cls_head.bias": torch.zeros(NCLS - 1),
                "module.pretrained.model.head.weight": torch.zeros(1000, 64)}
    return {**{f"module.{k}": v for k, v in own.items()}, "module.classifier.weight": torch.zeros(NCLS - 1, 96, 1, 1),
            "module.aux_classifier.weight": torch.zeros(NCLS - 1, 96, 1, 1),
            "module.graph_layer.norm.weight": torch.ones(96)}


@pytest.mark.parametrize("name", sorted(TINY_SEGMENTERS))
def test_checkpoint_filters_ignore_only_named_modules(name, tmp_path):
    seg = TINY_SEGMENTERS[name]()
    state = public_state(name, seg)
    torch.save(state, tmp_path / "ok.pth")
    TINY_SEGMENTERS[name]().load_checkpoint(str(tmp_path / "ok.pth"))  # named training-only modules: ignored
    # an unknown key is an error naming the file and the key
    torch.save({**state, "module.extra_head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(WsssBenchError, match=r"extra\.pth.*unexpected keys: extra_head\.weight"):
        TINY_SEGMENTERS[name]().load_checkpoint(str(tmp_path / "extra.pth"))
    # the same weights under two names (with and without the prefix, possibly disagreeing): an error
    key = next(k for k in state if "conv" in k or "decoder" in k)
    bare = key.split("module.", 1)[1].removeprefix("base.")
    torch.save({**state, bare: state[key] + 1}, tmp_path / "dup.pth")
    with pytest.raises(WsssBenchError, match=r"dup\.pth"):
        TINY_SEGMENTERS[name]().load_checkpoint(str(tmp_path / "dup.pth"))
