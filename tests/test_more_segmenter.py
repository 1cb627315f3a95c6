"""MoRe segmentation head: official layout loads strictly, logits and the native protocol vs. references.

The references are the LargeFOV of zwyang6/MoRe ``model/decoder/conv_head.py`` written with
``F.conv2d`` on the state dict, and the multi-scale loop of ``tools/infer_seg_voc.py`` written out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from more_official_layout import official_layout, random_checkpoint, ref_encoder, strip

from wsss_bench.errors import WsssBenchError
from wsss_bench.methods.backbones.vit_mct import VIT_MCT_CONFIGS
from wsss_bench.segmenters.base import Segmenter
from wsss_bench.segmenters.more_head import MoReSegmenter, MoReSegNet
from wsss_bench.segmenters.registry import load_segmenter
from wsss_bench.segmenters.tta import fused_scores

#: The demo/test encoder size (its dims are read, not assumed, so the tests follow the config).
TINY = VIT_MCT_CONFIGS["vit_tiny_demo"]


def ref_logits(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int, num_fg: int) -> torch.Tensor:
    tokens = ref_encoder(sd, x, depth, heads)
    gh, gw = x.shape[2] // 16, x.shape[3] // 16
    x4 = tokens[:, 4 + num_fg:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
    y = F.relu(F.conv2d(x4, sd["decoder.conv6.weight"], padding=5, dilation=5))
    y = F.relu(F.conv2d(y, sd["decoder.conv7.weight"], padding=5, dilation=5))
    return F.conv2d(y, sd["decoder.conv8.weight"])


def test_entry_point_resolves_to_the_segmenter():
    cls = load_segmenter("more")
    assert cls is MoReSegmenter and issubclass(cls, Segmenter)


@pytest.mark.parametrize("num_fg", [20, 80])
def test_vit_base_module_names_and_shapes_are_the_official_encoder_and_decoder(num_fg):
    with torch.device("meta"):
        net = MoReSegNet(num_fg + 1, VIT_MCT_CONFIGS["vit_base_patch16"])
    want = {k: v for k, v in official_layout(num_fg, 768, 12).items()
            if k.startswith(("encoder.", "decoder.")) and not k.startswith("encoder.head.")}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == want


@pytest.mark.parametrize("num_fg,size", [(20, (64, 80)), (80, (48, 48))])
def test_official_checkpoint_loads_strictly_and_logits_match_stepwise_forward(tmp_path, num_fg, size):
    state = random_checkpoint(official_layout(num_fg, TINY.embed_dim, TINY.depth), seed=10 + num_fg)
    torch.save(state, tmp_path / "seg.pth")
    seg = MoReSegmenter(num_fg + 1, "vit_tiny_demo")
    assert len(seg.load_checkpoint(str(tmp_path / "seg.pth"))) == 64
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = seg.logits(x)
        ref = ref_logits(strip(state), x, TINY.depth, TINY.num_heads, num_fg)
    assert out.shape == (2, num_fg + 1, size[0] // 16, size[1] // 16)
    scale = ref.abs().max()
    torch.testing.assert_close(out / scale, ref / scale, atol=1e-5, rtol=1e-5)


def test_missing_decoder_key_is_reported(tmp_path):
    state = random_checkpoint(official_layout(20, TINY.embed_dim, TINY.depth), seed=1)
    del state["module.decoder.conv7.weight"]
    torch.save(state, tmp_path / "nodec.pth")
    with pytest.raises(WsssBenchError, match=r"nodec\.pth.*missing keys: decoder\.conv7\.weight"):
        MoReSegmenter(21, "vit_tiny_demo").load_checkpoint(str(tmp_path / "nodec.pth"))


def test_native_protocol_equals_the_official_multiscale_loop():
    native = MoReSegmenter.native
    assert (native.scales, native.flip, native.flip_fusion, native.fusion, native.input_size, native.crf) == \
        ((1.0, 1.25, 1.5), True, "sum", "max", 448, None)
    torch.manual_seed(0)
    seg = MoReSegmenter(6, "vit_tiny_demo")
    seg.build()
    x = torch.randn(1, 3, 37, 53)
    small = native.replace(input_size=64)  # 448 in the real protocol; 64 keeps the test fast
    with torch.no_grad():
        got = fused_scores(seg.logits, x, small)
        seg_list = []  # tools/infer_seg_voc.py, _validate
        for sc in (1.0, 1.25, 1.5):
            side = int(64 * sc)
            v = F.interpolate(x, size=[side, side], mode="bilinear", align_corners=False)
            segs = seg.logits(torch.cat([v, v.flip(-1)], dim=0))
            segs = F.interpolate(segs, size=(37, 53), mode="bilinear", align_corners=False)
            seg_list.append(segs[:1] + segs[1:].flip(-1))
        want = torch.max(torch.stack(seg_list, dim=0), dim=0)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
