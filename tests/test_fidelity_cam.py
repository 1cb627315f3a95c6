"""Exact fidelity of the ``cam`` adapter to IRN's own inference (issue 20).

The reference below follows jiwoon-ahn/irn step by step, written from reading its files (none of its
code is copied):

- ``voc12/dataloader.py`` ``VOC12ClassificationDatasetMSF.__getitem__``: scale 1 keeps the uint8
  image, every other scale is ``misc/imutils.py`` ``pil_rescale`` (size ``int(np.round(side * s))``,
  Pillow ``Image.resize`` with ``BICUBIC``); ``TorchvisionNormalize`` divides by 255 in float64 and
  stores float32; the view and its mirror ``np.flip(img, -1)`` are stacked as a batch of two;
- ``net/resnet50.py`` + ``net/resnet50_cam.py`` ``CAM.forward``: ResNet-50 with strides (2, 2, 2, 1),
  no dilation, frozen batch norm; ``relu(conv2d(features, classifier.weight))`` for all classes, and
  the mirror's map flipped back and **added at the strided resolution** (``x[0] + x[1].flip(-1)``);
- ``step/make_cam.py``: every scale's map upsampled bilinearly (``align_corners=False``) to
  ``get_strided_up_size(size, 16)`` (the image size rounded up to a multiple of 16), summed over
  scales, cropped to the image size, the image's classes kept, divided by ``max + 1e-5``;
- ``step/eval_cam.py`` / ``cam_to_ir_label.py``: the label is the argmax over the maps padded with a
  constant 0.15 background plane (``np.pad``; ties go to the first plane, i.e. background).

The ResNet-50 of the reference is torchvision's (IRN's own layer names), with IRN's strides set;
the small demo backbone ``resnet-tiny`` (basic blocks) runs through a functional ResNet written from
IRN's ``net/resnet50.py`` structure. Weights are random with non-trivial batch-norm statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_helpers import irn_layout
from PIL import Image

from wsss_bench.data.base import Sample
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import compute_maps
from wsss_bench.inference.pseudo import hard_label
from wsss_bench.methods.cam import CAMAdapter

IRN_SCALES = (1.0, 0.5, 1.5, 2.0)
IRN_CAM_EVAL_THRES = 0.15  # run_sample.py --cam_eval_thres
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# -- the reference: IRN's procedure --------------------------------------------------------------

def irn_pil_rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """``misc/imutils.py`` ``pil_rescale(img, scale, order=3)`` -> ``pil_resize``."""
    h, w = img.shape[:2]
    size = (int(np.round(h * scale)), int(np.round(w * scale)))
    if size[0] == h and size[1] == w:
        return img
    return np.asarray(Image.fromarray(img).resize(size[::-1], Image.BICUBIC))


def irn_normalize(img: np.ndarray) -> np.ndarray:
    """``TorchvisionNormalize.__call__``: per channel ``(img / 255. - mean) / std`` in float64, stored
    in a float32 array."""
    out = np.empty_like(img, np.float32)
    for c in range(3):
        out[..., c] = (img[..., c] / 255. - MEAN[c]) / STD[c]
    return out


def irn_msf_views(img: np.ndarray, scales=IRN_SCALES) -> list[torch.Tensor]:
    """``VOC12ClassificationDatasetMSF.__getitem__``'s ``img`` list: per scale [2, 3, h, w] (view, mirror)."""
    out = []
    for s in scales:
        s_img = img if s == 1 else irn_pil_rescale(img, s)
        s_img = np.transpose(irn_normalize(s_img), (2, 0, 1))  # imutils.HWC_to_CHW
        out.append(torch.from_numpy(np.stack([s_img, np.flip(s_img, -1)], axis=0).copy()))
    return out


def torchvision_irn_resnet50(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """IRN's ``resnet50(strides=(2, 2, 2, 1))`` body (conv1 .. layer4) on torchvision's ResNet-50,
    loaded with ``state`` (torchvision names, no ``fc``)."""
    import torchvision

    with torch.device("meta"):  # no initialisation: every tensor comes from ``state``
        net = torchvision.models.resnet50(weights=None)
    net.layer4[0].conv2.stride = (1, 1)  # IRN's Bottleneck puts the stride on the 3x3 conv
    net.layer4[0].downsample[0].stride = (1, 1)
    del net.fc
    tracked = {k: torch.zeros((), dtype=torch.long) for k in net.state_dict() if k.endswith("num_batches_tracked")}
    net.load_state_dict({**tracked, **state}, strict=True, assign=True)
    net.eval()
    return torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                               net.layer1, net.layer2, net.layer3, net.layer4)


def irn_functional_resnet(state: dict[str, torch.Tensor], strides=(2, 2, 2, 1)):
    """IRN's ``net/resnet50.py`` ``ResNet`` as F.* calls on ``state``, for any block type and width
    (bottleneck when ``conv3`` exists, else a basic block with the stride on its first 3x3 conv);
    ``FixedBatchNorm`` = batch norm with running statistics, eps 1e-5."""
    def bn(x, p):
        return F.batch_norm(x, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], training=False, eps=1e-5)

    def body(x):
        x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=strides[0], padding=3), "bn1"))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for n, stride in zip((1, 2, 3, 4), (1, strides[1], strides[2], strides[3]), strict=True):
            i = 0
            while f"layer{n}.{i}.conv1.weight" in state:
                p, s = f"layer{n}.{i}", (stride if i == 0 else 1)
                if f"{p}.conv3.weight" in state:
                    out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
                    out = F.relu(bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=s, padding=1), f"{p}.bn2"))
                    out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
                else:
                    out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn1"))
                    out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                if f"{p}.downsample.0.weight" in state:
                    x = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
                x = F.relu(out + x)
                i += 1
        return x

    return body


def irn_cam_forward(body, classifier: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``resnet50_cam.CAM.forward`` on a [2, 3, h, w] (view, mirror) batch -> [C, h', w']."""
    x = F.relu(F.conv2d(body(x), classifier))
    return x[0] + x[1].flip(-1)


def irn_make_cam(img: np.ndarray, label: np.ndarray, body, classifier: torch.Tensor,
                 scales=IRN_SCALES) -> tuple[np.ndarray, np.ndarray]:
    """``step/make_cam.py`` ``_work`` for one image: (``keys``, ``high_res``) as it saves them."""
    size = img.shape[:2]
    strided_up_size = (((size[0] - 1) // 16 + 1) * 16, ((size[1] - 1) // 16 + 1) * 16)
    with torch.no_grad():
        outputs = [irn_cam_forward(body, classifier, v) for v in irn_msf_views(img, scales)]
        highres = [F.interpolate(torch.unsqueeze(o, 1), strided_up_size, mode="bilinear", align_corners=False)
                   for o in outputs]
        highres = torch.sum(torch.stack(highres, 0), 0)[:, 0, :size[0], :size[1]]
        valid_cat = torch.nonzero(torch.from_numpy(label))[:, 0]
        highres = highres[valid_cat]
        highres /= F.adaptive_max_pool2d(highres, (1, 1)) + 1e-5
    return valid_cat.numpy(), highres.numpy()


def irn_label(keys: np.ndarray, high_res: np.ndarray, thres: float = IRN_CAM_EVAL_THRES) -> np.ndarray:
    """``step/eval_cam.py``: argmax over the maps padded with a constant background plane."""
    cams = np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=thres)
    keys = np.pad(keys + 1, (1, 0), mode="constant")
    return keys[np.argmax(cams, axis=0)]


# -- random weights and images --------------------------------------------------------------------

def random_resnet_state(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random weights for a ResNet state dict: He-initialised convolutions, batch norm with random
    affine parameters and running statistics (so eval-mode batch norm is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in template.items():
        if k.endswith("num_batches_tracked") or k.startswith("fc."):
            continue
        if k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_mean"):
            out[k] = 0.2 * torch.randn(v.shape, generator=g)
        elif v.ndim == 1 and k.endswith("weight"):
            out[k] = 0.6 + 0.8 * torch.rand(v.shape, generator=g)
        elif v.ndim == 1:
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    return out


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 image with structure at several scales (smooth blobs plus pixel noise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, max(2, h // 24), max(2, w // 24)), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    img = 255 * np.clip(0.8 * smooth + 0.2 * rng.random((h, w, 3)), 0, 1)
    return img.round().astype(np.uint8)


def cam_case(backbone: str, num_classes: int, seed: int, path: Path | None = None):
    """(adapter with random weights, reference body, classifier weight). With ``path``, the weights
    go through a checkpoint file in IRN's exact layout (``cam_helpers.irn_layout``) and the adapter's
    ``load_checkpoint``; otherwise they are set directly."""
    torch.manual_seed(seed)
    a = CAMAdapter(num_classes, backbone=backbone)
    with torch.device("meta"):
        template = a.build().state_dict()
    state = random_resnet_state({k[len("backbone."):]: v for k, v in template.items() if k.startswith("backbone.")},
                                seed)
    g = torch.Generator().manual_seed(seed + 1)
    classifier = torch.randn(num_classes, template["classifier.weight"].shape[1], 1, 1, generator=g) * 0.05
    a.model = None
    if path is not None:
        torch.save(irn_layout(state, classifier), path)
        a.load_checkpoint(str(path))
    else:
        a.build()
        a.model.backbone.load_state_dict({**a.model.backbone.state_dict(), **state})
        a.model.classifier.weight.data.copy_(classifier)
    a.model.eval()
    body = torchvision_irn_resnet50(state) if backbone == "resnet50" else irn_functional_resnet(state)
    return a, body, classifier


def compare(a: CAMAdapter, body, classifier, img: np.ndarray, label: np.ndarray) -> tuple[float, int, int]:
    """The adapter vs IRN: (max relative map difference, differing native labels, number of distinct
    labels in IRN's, so that a test can check the decisions are not trivially all background)."""
    keys, ref = irn_make_cam(img, label, body, classifier)
    (got,) = compute_maps(a, [Sample("x", img, label, None)], a.native, torch.device("cpu"), "fp32")
    rel = float((got - torch.from_numpy(ref)).abs().max() / np.abs(ref).max())
    ours = hard_label(got, keys + 1, (a.native.background.rule, a.native.background.value))
    theirs = irn_label(keys, ref)
    return rel, int((ours != theirs).sum()), len(np.unique(theirs))


# -- the tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(281, 375), (333, 500), (11, 9)])
def test_tiny_backbone_matches_irn_make_cam_on_odd_sizes(size, tmp_path):
    a, body, classifier = cam_case("resnet-tiny", 20, seed=1, path=tmp_path / "cam.pth")
    label = np.zeros(20, np.float32)
    label[[2, 7, 14]] = 1
    rel, diff, n_labels = compare(a, body, classifier, random_image(*size, seed=size[0]), label)
    assert rel <= 1e-4
    assert diff == 0
    assert n_labels >= (2 if size == (11, 9) else 3)


def test_resnet50_from_an_irn_file_matches_irn_make_cam_on_an_odd_image(tmp_path):
    a, body, classifier = cam_case("resnet50", 20, seed=3, path=tmp_path / "res50_cam.pth")
    label = np.zeros(20, np.float32)
    label[[0, 11, 19]] = 1
    rel, diff, n_labels = compare(a, body, classifier, random_image(53, 71, seed=3), label)
    assert rel <= 1e-4
    assert diff == 0
    assert n_labels >= 3


def test_reference_network_is_irn_resnet50():
    """The two reference networks agree with each other on ResNet-50 (torchvision vs F.* calls), and
    IRN's strides give output stride 16 (``get_strided_size(size, 16)`` for a size not a multiple of
    16 is ``(size - 1) // 16 + 1``)."""
    import torchvision

    with torch.device("meta"):
        template = torchvision.models.resnet50(weights=None).state_dict()
    state = random_resnet_state(template, seed=4)
    body = torchvision_irn_resnet50(state)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        tv, fn = body(x), irn_functional_resnet(state)(x)
    assert tv.shape == (1, 2048, 3, 3)
    assert float((tv - fn).abs().max() / fn.abs().max()) <= 1e-5


# -- checkpoint filters (issue 20, item 10) -------------------------------------------------------

def _tiny_irn_state(seed: int = 0) -> tuple[CAMAdapter, dict[str, torch.Tensor]]:
    a = CAMAdapter(5, backbone="resnet-tiny")
    a.build()
    state = random_resnet_state(a.model.backbone.state_dict(), seed)
    state |= {k: v for k, v in a.model.backbone.state_dict().items() if k.endswith("num_batches_tracked")}
    return a, irn_layout(state, torch.randn(5, 128, 1, 1))


def _load(state: dict[str, torch.Tensor], path: Path) -> CAMAdapter:
    torch.save(state, path)
    a = CAMAdapter(5, backbone="resnet-tiny")
    a.load_checkpoint(str(path))
    return a


def test_irn_layout_is_resnet50_cam_net_state_dict_and_loads_its_resnet50_tensors(tmp_path):
    _, state = _tiny_irn_state()
    # the duplicate names IRN's Net registers (a tiny ResNet has the same module tree as ResNet-50)
    assert {k.split(".")[0] for k in state} == {"resnet50", "stage1", "stage2", "stage3", "stage4", "backbone",
                                               "classifier", "newly_added"}
    assert "stage1.4.0.conv1.weight" in state and "backbone.3.0.0.downsample.0.weight" in state
    a = _load(state, tmp_path / "irn.pth")
    loaded = a.model.state_dict()
    assert all(torch.equal(loaded["backbone." + k[len("resnet50."):]], v) for k, v in state.items()
               if k.startswith("resnet50."))
    assert torch.equal(loaded["classifier.weight"], state["classifier.weight"])


@pytest.mark.parametrize("key", ["stage4.0.0.conv2.weight", "backbone.1.0.0.bn1.running_var", "stage1.1.bias",
                                 "newly_added.0.weight"])
def test_a_duplicate_that_differs_from_its_resnet50_tensor_is_an_error_naming_it(tmp_path, key):
    _, state = _tiny_irn_state()
    state[key] = state[key] + 1.0
    with pytest.raises(WsssBenchError) as e:
        _load(state, tmp_path / "irn.pth")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "irn.pth")) and key in msg and "differ" in msg


def test_a_duplicate_without_the_tensor_it_copies_is_an_error(tmp_path):
    _, state = _tiny_irn_state()
    state["stage4.0.7.conv1.weight"] = torch.zeros(3, 3)
    with pytest.raises(WsssBenchError, match=r"stage4\.0\.7\.conv1\.weight"):
        _load(state, tmp_path / "irn.pth")


def test_an_unknown_key_in_the_irn_layout_is_an_error_listing_it(tmp_path):
    _, state = _tiny_irn_state()
    state["aux_head.weight"] = torch.zeros(5, 128, 1, 1)
    state["stage5.0.weight"] = torch.zeros(1)
    with pytest.raises(WsssBenchError) as e:
        _load(state, tmp_path / "irn.pth")
    assert "aux_head.weight" in str(e.value) and "stage5.0.weight" in str(e.value)


def test_plain_torchvision_resnet50_with_classifier_loads_and_unknown_keys_are_refused(tmp_path):
    import torchvision

    plain = torchvision.models.resnet50(weights=None).state_dict()  # includes the ImageNet fc.*
    assert "fc.weight" in plain
    plain["classifier.weight"] = torch.randn(20, 2048, 1, 1)
    torch.save(plain, tmp_path / "tv.pth")
    a = CAMAdapter(20)
    a.load_checkpoint(str(tmp_path / "tv.pth"))
    loaded = a.model.state_dict()
    assert torch.equal(loaded["backbone.layer3.5.bn2.running_var"], plain["layer3.5.bn2.running_var"])
    assert torch.equal(loaded["classifier.weight"], plain["classifier.weight"])
    plain["head.weight"] = torch.zeros(1)
    torch.save(plain, tmp_path / "tv.pth")
    with pytest.raises(WsssBenchError, match="unexpected keys: backbone.head.weight"):
        CAMAdapter(20).load_checkpoint(str(tmp_path / "tv.pth"))


def test_own_layout_and_dataparallel_prefix_load_and_unknown_keys_are_refused(tmp_path):
    a, _ = _tiny_irn_state()
    own = {"module." + k: v for k, v in a.model.state_dict().items()}
    b = _load(own, tmp_path / "own.pth")
    assert torch.equal(b.model.classifier.weight, a.model.classifier.weight)
    own["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(WsssBenchError, match="unexpected keys: extra.weight"):
        _load(own, tmp_path / "own.pth")


def test_a_checkpoint_without_classifier_is_an_error(tmp_path):
    _, state = _tiny_irn_state()
    del state["classifier.weight"]
    with pytest.raises(WsssBenchError, match="no 'classifier.weight'"):
        _load(state, tmp_path / "irn.pth")
