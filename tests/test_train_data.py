"""Training data and objective: augmentation against naive references, rank-independent sampling,
pseudo-label checks and provenance, the multi-scale loss against the reference's formula, and the
batch-norm statistics of micro-batches against PyTorch's own sequential updates."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss_bench.data import build_dataset
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.training import data as TD
from wsss_bench.training.objective import BNStatSync, TrainObjective, resize_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------


def naive_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """cv2.INTER_LINEAR semantics (half-pixel centres, edge clamp, no antialiasing), as loops."""
    H, W = img.shape[:2]
    out = np.zeros((h, w) + img.shape[2:], dtype=np.float64)
    for y in range(h):
        sy = min(max((y + 0.5) * H / h - 0.5, 0), H - 1)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, H - 1), sy - y0
        for x in range(w):
            sx = min(max((x + 0.5) * W / w - 0.5, 0), W - 1)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, W - 1), sx - x0
            out[y, x] = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
                         + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
    return out


def exact_nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel: floor((i + 0.5) * n_in / n_out), in integers."""
    return ((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out)


@pytest.mark.parametrize("scale, pad", [(0.5, "bottom-right"), (1.25, "bottom-right"), (0.75, "centre"), (1.5, "centre")])
def test_augmentation_equals_naive_reference(scale, pad):
    rng = np.random.default_rng(0)
    H, W, crop = 23, 30, 26
    img = rng.normal(size=(3, H, W)).astype(np.float32)
    lab = rng.integers(0, 6, size=(H, W)).astype(np.uint8)
    spec = TD.AugmentSpec(crop=crop, scales=(scale,), flip=True, pad=pad)
    draw = TD.draw_augment(np.random.default_rng(3), spec, H, W)
    h, w = int(H * scale), int(W * scale)
    assert (draw.height, draw.width) == (h, w)
    x, y = TD.apply_augment(torch.from_numpy(img), torch.from_numpy(lab), draw, spec)
    # reference: resize (bilinear image, PIL NEAREST label), pad (0 / 255), crop, flip
    ref_img = naive_bilinear(img.transpose(1, 2, 0), h, w).transpose(2, 0, 1)
    ref_lab = lab[exact_nearest(H, h)][:, exact_nearest(W, w)].astype(np.int64)
    pil = np.asarray(Image.fromarray(lab).resize((w, h), resample=Image.NEAREST)).astype(np.int64)
    ties = np.zeros((h, w), dtype=bool)  # PIL rounds (i + 0.5) * in / out down where it is an integer
    ties[((2 * np.arange(h) + 1) * H) % (2 * h) == 0, :] = True
    ties[:, ((2 * np.arange(w) + 1) * W) % (2 * w) == 0] = True
    np.testing.assert_array_equal(pil[~ties], ref_lab[~ties])
    ph, pw = max(h, crop), max(w, crop)
    top_pad = (ph - h) // 2 if pad == "centre" else 0
    left_pad = (pw - w) // 2 if pad == "centre" else 0
    P = np.zeros((3, ph, pw))
    L = np.full((ph, pw), 255, dtype=np.int64)
    P[:, top_pad:top_pad + h, left_pad:left_pad + w] = ref_img
    L[top_pad:top_pad + h, left_pad:left_pad + w] = ref_lab
    P = P[:, draw.top:draw.top + crop, draw.left:draw.left + crop]
    L = L[draw.top:draw.top + crop, draw.left:draw.left + crop]
    if draw.flip:
        P, L = P[..., ::-1], L[..., ::-1]
    np.testing.assert_allclose(x.numpy(), P, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), L)
    assert x.shape == (3, crop, crop) and y.dtype == torch.int64


def test_draw_covers_choices_and_stays_in_range():
    spec = TD.AugmentSpec(crop=10, scales=(0.5, 1.0, 1.5), flip=True)
    rng = np.random.default_rng(0)
    draws = [TD.draw_augment(rng, spec, 12, 17) for _ in range(300)]
    assert {d.scale for d in draws} == {0.5, 1.0, 1.5}
    assert {d.flip for d in draws} == {True, False}
    for d in draws:
        assert 0 <= d.top <= max(d.height, 10) - 10 and 0 <= d.left <= max(d.width, 10) - 10
    uni = TD.AugmentSpec(crop=10, scales=(0.5, 2.0), scale_sampling="uniform", flip=False)
    us = [TD.draw_augment(rng, uni, 12, 17).scale for _ in range(200)]
    assert 0.5 <= min(us) < 0.7 and 1.8 < max(us) <= 2.0


def test_normalise_image_equals_segmenter_normalize():
    from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter, DeepLabV3PlusSegmenter

    img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for cls in (DeepLabV2Segmenter, DeepLabV3PlusSegmenter):
        seg = cls(21)
        ref = seg.normalize(torch.from_numpy(img)[None])[0]
        torch.testing.assert_close(TD.normalise_image(img, seg.mean, seg.std, seg.channel_order), ref)


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_images=12, seed=2, size=(40, 52))


def test_rank_samplers_split_each_global_batch_and_cover_it_once():
    one = list(TD.RankSampler(3, 6, batch=8, rank=0, world_size=1))
    parts = [list(TD.RankSampler(3, 6, batch=8, rank=r, world_size=4)) for r in range(4)]
    assert one == list(range(24, 48)) and len(TD.RankSampler(3, 6, 8, 0, 4)) == 6
    for it in range(3):  # iteration by iteration, rank r holds slice r of the global batch
        assert sum((p[it * 2:(it + 1) * 2] for p in parts), []) == one[it * 8:(it + 1) * 8]


def test_samples_depend_only_on_seed_and_global_index(synth):
    ds = build_dataset("synthetic", synth, "train")
    spec = TD.AugmentSpec(crop=32, scales=(0.5, 1.0, 1.5))
    mk = lambda seed: TD.PseudoLabelTrainSet(ds, synth / "SegmentationClass", spec, seed, batch=4,  # noqa: E731
                                             mean=(0.5,) * 3, std=(0.25,) * 3, channel_order="RGB")
    a, b, c = mk(0), mk(0), mk(1)
    for g in (0, 5, 17, 40):
        xa, ya = a[g]
        xb, yb = b[g]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(a[g][0], c[g][0]) for g in range(4))
    n = len(ds.ids)  # each epoch visits every image once, in a seeded order
    assert sorted(a.image_index(g) for g in range(n)) == list(range(n))
    assert sorted(a.image_index(g) for g in range(n, 2 * n)) == list(range(n))
    assert [a.image_index(g) for g in range(n)] != [a.image_index(g) for g in range(n, 2 * n)]


# ------------------------------------------------------------------------------------------------
# Pseudo-label checks and provenance
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def pseudo(synth, tmp_path):
    d = tmp_path / "pseudo"
    shutil.copytree(synth / "SegmentationClass", d)
    return d


def test_valid_pseudo_labels_pass(synth, pseudo):
    ds = build_dataset("synthetic", synth, "train")
    TD.validate_pseudo_labels(ds, pseudo)
    TD.validate_pseudo_labels(ds, pseudo, workers=2)


def test_pseudo_label_problems_name_the_file(synth, pseudo):
    ds = build_dataset("synthetic", synth, "train")
    first, second = ds.ids[2], ds.ids[5]
    (pseudo / f"{first}.png").unlink()
    with pytest.raises(WsssBenchError) as e:
        TD.validate_pseudo_labels(ds, pseudo)
    assert str(e.value) == f"{pseudo / first}.png: pseudo label missing for image {first!r} (expected {first}.png)"
    shutil.copy(synth / "SegmentationClass" / f"{first}.png", pseudo / f"{first}.png")
    lab = np.asarray(Image.open(pseudo / f"{second}.png"))
    Image.fromarray(lab[:-1]).save(pseudo / f"{second}.png")
    with pytest.raises(WsssBenchError, match=rf"{second}.png: pseudo label is {lab.shape[1]}x{lab.shape[0] - 1} "
                                             rf"but image '{second}' is {lab.shape[1]}x{lab.shape[0]}"):
        TD.validate_pseudo_labels(ds, pseudo)
    bad = lab.copy()
    bad[0, 0] = 9
    Image.fromarray(bad).save(pseudo / f"{second}.png")
    with pytest.raises(WsssBenchError, match=r"value 9 is outside the class set \(0..5, 255 ignored\)"):
        TD.validate_pseudo_labels(ds, pseudo, workers=2)
    (pseudo / f"{second}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(WsssBenchError, match="cannot decode image"):
        TD.validate_pseudo_labels(ds, pseudo)


def test_pseudo_json_round_trip_and_record_source(tmp_path, pseudo):
    record = {"kind": "pseudo_label", "name": "cam-native", "method": "cam", "settings": {"name": "native"},
              "fingerprint": "f" * 64, "dataset": "synthetic", "split": "train", "num_images": 9,
              "metrics": {"miou": 0.41}, "protocol_version": 2}
    content = TD.pseudo_json(record, 0.33, "best", labels_miou=0.40, record_file=tmp_path / "cam-native.json")
    assert not {"kind", "metrics", "protocol_version"} & set(content)  # never read as a run record
    assert set(content) == set(TD.PSEUDO_KEYS)
    TD.write_pseudo_json(pseudo, content)
    src = TD.read_pseudo_source(pseudo)
    assert (src.origin, src.record, src.method, src.fingerprint, src.miou, src.threshold, src.labels_miou) == \
        ("pseudo-json", "cam-native", "cam", "f" * 64, 0.41, 0.33, 0.40)
    rec_path = tmp_path / "cam-native.json"
    rec_path.write_text(json.dumps({**record, "pseudo_threshold": 0.3}))
    src = TD.read_pseudo_source(pseudo, rec_path)  # an explicit record wins over the folder's json
    assert (src.origin, src.record, src.threshold, src.miou) == ("record", "cam-native", 0.3, 0.41)
    (pseudo / TD.PSEUDO_JSON).unlink()
    assert TD.read_pseudo_source(pseudo).origin is None


@pytest.mark.parametrize("content, message", [
    ({"format": "other"}, "not a wsss-bench-pseudo.json file"),
    ({"format": "wsss-bench-pseudo", "version": 9}, "unsupported wsss-bench-pseudo.json version 9"),
    ({"format": "wsss-bench-pseudo", "version": 1, "miou": "high"}, "miou must be a number or null"),
    ({"format": "wsss-bench-pseudo", "version": 1, "colour": 1}, "unknown key 'colour'"),
])
def test_bad_pseudo_json_is_a_one_line_error(pseudo, content, message):
    (pseudo / TD.PSEUDO_JSON).write_text(json.dumps(content))
    with pytest.raises(WsssBenchError, match=message) as e:
        TD.read_pseudo_source(pseudo)
    assert str(pseudo / TD.PSEUDO_JSON) in str(e.value)


def test_segmentation_record_is_not_a_pseudo_record(tmp_path, pseudo):
    p = tmp_path / "seg.json"
    p.write_text(json.dumps({"kind": "segmentation", "name": "x"}))
    with pytest.raises(WsssBenchError, match="not a pseudo-label record"):
        TD.read_pseudo_source(pseudo, p)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Output stride 4, like a (much) smaller DeepLab."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, classes, 3, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def reference_msc_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """kazuto1011 libs/models/msc.py (training) + main.py's loss, with PIL NEAREST label resizing."""
    logits = net(images)
    H, W = logits.shape[2:]
    pyramid = [net(F.interpolate(images, scale_factor=p, mode="bilinear", align_corners=False)) for p in (0.75, 0.5)]
    interp = [F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False) for p in pyramid]
    logits_max = torch.max(torch.stack([logits] + interp), dim=0)[0]
    crit = nn.CrossEntropyLoss(ignore_index=255)
    total = 0
    for logit in [logits] + pyramid + [logits_max]:
        _, _, h, w = logit.shape
        lab = torch.LongTensor(np.stack([
            np.asarray(Image.fromarray(lb.float().numpy()).resize((w, h), resample=Image.NEAREST))
            for lb in labels]).astype(np.int64))
        total = total + crit(logit, lab)
    return total


def test_msc_loss_equals_the_reference_formula():
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.randn(3, 3, 41, 45)
    y = torch.randint(0, 5, (3, 41, 45))
    y[:, :4] = 255
    ours = TrainObjective(net, "msc", (0.75, 0.5))(x, y)
    torch.testing.assert_close(ours, reference_msc_loss(net, x, y), rtol=1e-5, atol=1e-6)
    for size in ((11, 12), (8, 9), (6, 6)):  # label resizing is PIL's NEAREST, exactly
        ref = np.stack([np.asarray(Image.fromarray(lb.numpy().astype(np.float32)).resize(size[::-1], Image.NEAREST))
                        for lb in y])
        np.testing.assert_array_equal(resize_labels(y, size).numpy(), ref.astype(np.int64))


def test_ce_loss_upsamples_logits_and_all_ignored_is_zero():
    torch.manual_seed(0)
    net = TinyNet()
    x, y = torch.randn(2, 3, 16, 20), torch.randint(0, 5, (2, 16, 20))
    logits = F.interpolate(net(x), size=(16, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(TrainObjective(net, "ce")(x, y), F.cross_entropy(logits, y))
    assert float(TrainObjective(net, "ce")(x, torch.full_like(y, 255)).detach()) == 0.0


def test_bn_running_statistics_equal_pytorch_sequential_updates():
    """Several micro-batches and several passes per micro-batch (as the multi-scale loss makes):
    the synchronised update equals the batch norm updating itself pass after pass."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.1), nn.ReLU(), nn.Conv2d(4, 4, 1),
                        nn.BatchNorm2d(4, momentum=0.3))
    ours = copy.deepcopy(ref)
    sync = BNStatSync(ours)
    ref.train()
    ours.train()
    for step in range(3):
        micro = [torch.randn(2, 3, 9, 9) * (step + 1) + step for _ in range(3)]
        sync.begin_step()
        for m, x in enumerate(micro):
            sync.begin_micro(m)
            for s in (1.0, 0.5):  # two passes through the network per micro-batch
                xs = F.interpolate(x, scale_factor=s) if s != 1.0 else x
                ref(xs)
                ours(xs)
        sync.end_step(total_micro=3, distributed=False)
    sync.close()
    for a, b in zip(ref.modules(), ours.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(b.running_mean, a.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.running_var, a.running_var, rtol=1e-5, atol=1e-6)
            assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 18
            assert b.momentum == a.momentum


def test_bn_sync_split_across_two_ranks_equals_one_rank():
    """What one all-reduce adds up: rank 0 with micro-batches 0-1, rank 1 with 2-3, summed, equals one
    process running all four (the terms each rank contributes are computed locally)."""
    torch.manual_seed(1)
    base = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    micro = [torch.randn(2, 3, 8, 8) + i for i in range(4)]
    whole = copy.deepcopy(base)
    sync = BNStatSync(whole)
    sync.begin_step()
    for i, x in enumerate(micro):
        sync.begin_micro(i)
        whole(x)
    sync.end_step(4, distributed=False)
    contributions = []
    for rank in (0, 1):
        m = copy.deepcopy(base)
        s = BNStatSync(m)
        s.begin_step()
        for a in range(2):
            s.begin_micro(rank * 2 + a)
            m(micro[rank * 2 + a])
        bn = m[1]
        before = bn.running_mean.clone()
        s.end_step(4, distributed=False)  # alone: decay * before + own terms
        contributions.append(bn.running_mean - 0.9 ** 4 * before)
    combined = 0.9 ** 4 * base[1].running_mean + contributions[0] + contributions[1]
    torch.testing.assert_close(combined, whole[1].running_mean, rtol=1e-6, atol=1e-7)
