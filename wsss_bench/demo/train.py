"""Training the small demo models on the synthetic set (``wsss-bench demo train``).

Each built-in method gets a small network of its own architecture, trained from a seed on CPU with
the method's classification objective on image-level labels (multi-label soft margin):

- ``cam``: the ResNet classifier after global average pooling (IRN's ``Net.forward``).
- ``edam``: EDAM's own training path without its transformer (:class:`EDAMTrainingHead`): each
  class's L2-normalised absolute DA mask weights an average of the projected features, scored by
  that class's own linear layer, so the masks are trained as the spatial attention the adapter
  reads. The weighted average is a demo decision (EDAM average-pools the masked features); the
  collaborative multi-attention transformer is a training-time component we do not build. From
  scratch the batch norms train (EDAM fine-tunes ImageNet weights with them frozen; frozen at their
  initial values they left the narrow network unable to learn). An earlier demo objective, global
  average pooling of the raw DA outputs, saturated every mask (maps near 1 everywhere, 9 mIoU).
- ``getam``: GETAM's classification path (``cls_head`` on the pooled last-block tokens) on a small
  hybrid backbone (``vit_hybrid_demo``: a two-stage ResNet-V2 trunk of stride 8 under 4 ViT blocks
  of dim 64), the scaled-down form of the R50+ViT hybrid GETAM reports on COCO. The plain 4-block
  ViTs (patch 16 or 8) scored at or below the centre prior on the val split (21.4 with patch 8).
- ``ad-cam``: the patch-token classifier after global average pooling.
- ``more``: MoRe's own classification losses, scaled down (:class:`MoReTrainingHead`): both GMP
  classifiers, the class-token regulariser and the class-token / patch-token contrast that trains
  the LAM, on a 2-block multi-class-token ViT of dim 96 with 3 heads (``VIT_MCT_CONFIGS`` entry
  ``vit_tiny_demo``; with MoRe's contrast temperature 0.5, val 31.7 against 28.9 at dim 64 with 2
  heads, 29.2 at dim 96 with 2 heads and 28.0 at dim 128 with 4 heads), with the contrast's
  temperature at 1.0 (val 32.5).

Training set: ``TRAIN_SET``'s generator (seed 1234), its ``train`` split, never the demo set
(seed 0). The recipes in ``DEMO_MODELS`` were chosen on the ``val`` split of the 1,440-image set
(360 images) only. Images are pre-resized once to the method's training size; each step draws a
batch of 32, flips it at random and, with ``sizes``, resizes it to a side drawn from ``sizes``
(several scales, as the multi-scale inference uses). AdamW with a one-cycle schedule.

The ViTs trained from scratch need data more than anything: on the 1,080 training images of the
1,440-image set the plain ViT of AD-CAM memorised (image-level mAP 86 on train, 39 on val) and its
CAM was dark on the objects and bright on the background; MoRe's barely classified at all. On the
10,800 training images of a 14,400-image set from the same generator, at a lower learning rate
(5e-4) and for 30,000 steps, AD-CAM's ViT generalises (mAP 61 on train, 59 on val after 10,000
steps) and its CAM follows the objects; GETAM's hybrid, which learns faster, also gained from lr 5e-4.
Recipes tried on the val split are listed in docs/demo-log.md. The model is saved as
safetensors in the layout its adapter loads (``wsss_bench/demo/weights/<method>.safetensors``), with a manifest entry
(SHA-256, seed, steps, command).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.io import atomic_path, atomic_write_json, sha256_file
from wsss_bench.methods.base import MethodAdapter


@dataclass(frozen=True)
class DemoModel:
    method: str
    backbone: str
    train_size: int
    steps: int
    lr: float
    objective: str
    batch: int = 32
    #: each step resizes its batch to a side drawn uniformly from these (multi-scale training)
    sizes: tuple[int, ...] = ()
    #: images generated for training (``TRAIN_SET``'s seed and sizes); its ``train`` split is used
    train_images: int | None = None  # None: TRAIN_SET["num_images"]

    @property
    def num_train_images(self) -> int:
        return self.train_images or TRAIN_SET["num_images"]


#: MoRe's ``cam_scales``: the no-grad pass whose auxiliary CAM makes the contrast's pseudo labels
MORE_LABEL_SCALES = (1.0, 0.5, 0.75, 1.5)
#: The demo's CLE temperature (MoRe's is 0.5; 1.0 scored higher on val with the dim-96 demo encoder).
MORE_DEMO_TEMPERATURE = 1.0

DEMO_MODELS: dict[str, DemoModel] = {
    "cam": DemoModel("cam", "resnet-tiny", 96, 2000, 1e-2, "multi-label soft margin on GAP logits",
                     batch=32, sizes=(64, 80, 96)),
    "edam": DemoModel("edam", "resnet38-w0.0625", 64, 3000, 2e-3,
                      "multi-label soft margin on per-class scores of the DA-mask-weighted average of "
                      "projected features (EDAM's d_d/fc_list path without the collaborative transformer)",
                      batch=32, sizes=(48, 64, 80)),
    "getam": DemoModel("getam", "vit_hybrid_demo", 96, 4000, 5e-4, "multi-label soft margin on cls_head logits",
                       batch=32, sizes=(80, 96, 112), train_images=4320),
    "ad-cam": DemoModel("ad-cam", "vit_tiny_demo", 128, 30000, 5e-4,
                        "multi-label soft margin on the GAP of the patch-token classifier", batch=32,
                        sizes=(80, 96, 112), train_images=14400),
    "more": DemoModel("more", "vit_tiny_demo", 96, 10000, 5e-4,
                      "MoRe's losses: multi-label soft margin on the GMP classifier and on the GMP auxiliary "
                      "classifier (MoRe's block -3; in this 2-block network the last block before the final "
                      "norm), the class-token regulariser, and from step 3,000 the class-token / patch-token "
                      f"contrast (CLE, weight 0.2, temperature {MORE_DEMO_TEMPERATURE}) on pseudo labels from "
                      "the auxiliary CAM of a no-grad pass at "
                      f"scales {', '.join(map(str, MORE_LABEL_SCALES))} with flips (MoRe's multi_scale_cam2)",
                      batch=32, sizes=(80, 96, 112), train_images=14400),
}
TRAIN_SET = {"num_images": 1440, "seed": 1234, "size": (96, 128)}


class EDAMTrainingHead(torch.nn.Module):
    """The demo's training-only head for EDAM, after EDAM's ``Net.forward`` without its transformer.

    EDAM multiplies a 1x1 projection of the features (``d_d``, 4096 -> 128, no bias) by each class's
    L2-normalised absolute DA mask, runs the collaborative multi-attention transformer over the
    masked features of the mini-batch, average-pools and scores each class with its own 1x1
    convolution (``fc_list[c]``, no bias). The demo keeps the masked projection, the pooling and the
    per-class scores and drops the transformer, so the DA masks are trained as spatial attention,
    exactly the quantity the adapter reads at inference. The head is not saved (the adapter ignores
    EDAM's training-only keys anyway).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 32):
        super().__init__()
        self.d_d = torch.nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.fc = torch.nn.Parameter(torch.empty(num_classes, hidden))
        torch.nn.init.xavier_uniform_(self.d_d.weight)
        torch.nn.init.xavier_uniform_(self.fc)

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        from wsss_bench.methods.edam import da_maps

        feats = model.features(x)
        masks = da_maps(feats, model.mask_layer.weight)[:, : self.fc.shape[0]]  # [N, K, h, w]
        proj = self.d_d(feats)  # [N, D, h, w]
        # mask-weighted average of the projected features: a mask spread over the whole image pools
        # the background in with the object, so a class scores highest when its mask covers just it
        pooled = torch.einsum("nkhw,ndhw->nkd", masks, proj) / masks.sum(dim=(2, 3)).clamp_min(1e-6)[..., None]
        return (pooled * self.fc).sum(-1)  # [N, K]


class MoReTrainingHead(torch.nn.Module):
    """The demo's training-only part of MoRe's objective (``scripts/train_voc.py``), scaled down.

    Kept from the official training, with its weights: the classifier after global max pooling of
    the final patch tokens (1.0); ``aux_classifier`` on the raw (un-normed) patch tokens of block
    ``-3`` after global max pooling (1.0; the demo's 2-block network has no block -3 and uses the
    output of its last block before the final norm); the class-token regulariser of ``multi_cls_loss`` (1.0: the
    L2-normalised GCR-refined class tokens, cosine / 0.07, cross-entropy against their own index);
    and the class-token / patch-token contrast (CLE, 0.2; ``temperature``, MoRe's 0.5 by default, the
    demo's ``MORE_DEMO_TEMPERATURE`` 1.0, see below): for each class of the
    image, a softmax over the (detached) patch tokens of the normalised refined class token, whose
    negative log is averaged over the patches that the auxiliary CAM labels with that class
    (ToCo's ``cam_to_label``: background 0.5, ignored between 0.25 and 0.5). The auxiliary CAM is
    that of MoRe's no-grad multi-scale pass (:meth:`aux_cam`, ``label_scales``). The contrast
    trains exactly the LAM the adapter reads. The official run fine-tunes ImageNet weights and
    contrasts from its first step; from scratch the contrast waits ``cle_from`` steps, while the
    auxiliary CAM is still noise (our decision).

    Left out, our decision: the uncertain-region contrast (UNE: its 6 x 6 window search has at most one
    position on the demo's 5 x 5 to 7 x 7 training grids; a scaled-down form with a centred 3 x 3
    window, from step 3,000, scored 28.6 / 29.6 / 27.2 / 21.6 at weights 0.1 (MoRe's) / 0.5 / 1.0 / 2.0,
    and 26.7 at 0.5 with seed 1, against 28.9 and 27.8 without: no gain beyond seed noise), ToCo's
    patch-token contrast (measured on the val split: 24.9 from step 3,000, 19.5 from step 0, against
    27.0 without; the noisy auxiliary CAM's labels spread into the patch tokens), the official switch of
    the contrast's labels to the final CAM halfway through training (28.4 from step 5,000 against 28.9
    without; seed 1 of the kept recipe gives 27.8, so within seed noise: the simpler single source
    stays), and the segmentation decoder with its seg loss (it reaches the LAM's patch tokens through
    the encoder: a LargeFOV of width 128 on the final patch tokens, from step 3,000, on the final CAM's
    labels refined by PAR, the official ``refine_cams_with_bkg_v2`` at high 0.7 / low 0.25, at a quarter
    of the input size with dilations 1, 2, 4, scored 28.5 at MoRe's weight 0.12 and 25.0 at 0.5) and its
    energy loss (not built). PAR on the contrast's own labels, a demo idea, scored 21.1 / 18.9
    (foreground above 0.5 / 0.7): PAR's smoothing lowers the peaks, so few patches stay foreground. The
    patch tokens stay detached in the contrast, as in the official ``CRELoss_neg``; letting it train
    them scored 24.3 (weight 0.2) and 22.8 (weight 1.0). All of these val figures were taken with the
    earlier dim-64 encoder of 2 heads, where MoRe's contrast temperature 0.5 was best (0.15, 0.25, 1.0
    and 2.0 scored 26.3, 27.4, 28.0 and 28.2). On the shipped dim-96 encoder of 3 heads, whose wider
    patch tokens give larger logits, temperature 1.0 scores 32.5 against 31.7 at 0.5, so the demo
    uses 1.0 (our decision; ``temperature`` defaults to MoRe's 0.5 for any other use of the head).
    """

    def __init__(self, dim: int, num_classes: int, depth: int, cle_from: int = 3000,
                 cle_weight: float = 0.2, temperature: float = 0.5, reg_temperature: float = 0.07,
                 label_scales: tuple[float, ...] = MORE_LABEL_SCALES):
        super().__init__()
        if not label_scales:
            raise ValueError("MoReTrainingHead: label_scales is empty; the contrast's pseudo labels need at "
                             "least one scale of the no-grad auxiliary-CAM pass")
        #: scales of the no-grad pass that makes the contrast's pseudo labels (MoRe's ``cam_scales``)
        self.label_scales = tuple(label_scales)
        self.aux_classifier = torch.nn.Conv2d(dim, num_classes, kernel_size=1, bias=False)
        # MoRe's aux_layer -3 (block 9 of 12); a network of fewer than 3 blocks (the demo's has 2)
        # uses its last block's output before the final norm
        self.aux_block = depth - 3 if depth >= 3 else depth - 1
        self.cle_from, self.cle_weight = cle_from, cle_weight
        self.temperature, self.reg_temperature = temperature, reg_temperature

    def aux_cam(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary CAM of MoRe's ``multi_scale_cam2`` without gradients, ``[B, K, H, W]`` at the
        input size: at each of ``label_scales`` the image and its flip in one batch, the auxiliary
        classifier on block ``aux_block``, bilinear upsampling to the input size, flip fused by max,
        ReLU; summed over the scales, then min-max normalised per class (eps 1e-5)."""
        b, _, h, w = x.shape
        total = torch.zeros(())
        with torch.no_grad():
            for s in self.label_scales:
                xs = x if s == 1.0 else F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear",
                                                      align_corners=False)
                _, _, block_map = model.features_and_block(torch.cat([xs, xs.flip(-1)]), self.aux_block)
                cam = F.interpolate(F.conv2d(block_map, self.aux_classifier.weight), size=(h, w),
                                    mode="bilinear", align_corners=False)
                total = total + F.relu(torch.maximum(cam[:b], cam[b:].flip(-1)))
            total = total - total.amin(dim=(2, 3), keepdim=True)
            return total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)

    def forward(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        mlsm = F.multilabel_soft_margin_loss
        class_tokens, patch_map, aux_map = model.features_and_block(x, self.aux_block)
        loss = mlsm(model.classifier(F.adaptive_max_pool2d(patch_map, 1)).flatten(1), y)
        loss = loss + mlsm(self.aux_classifier(F.adaptive_max_pool2d(aux_map, 1)).flatten(1), y)
        refined = model.graph_layer(class_tokens, patch_map.flatten(2).transpose(1, 2))
        unit = F.normalize(refined, dim=-1)
        target = torch.arange(unit.shape[1], device=x.device).expand(unit.shape[0], -1)
        loss = loss + F.cross_entropy(unit @ unit.transpose(1, 2) / self.reg_temperature, target)
        if step >= self.cle_from:
            # MoRe's multi-scale no-grad pass, resized to the patch grid
            cam = F.interpolate(self.aux_cam(model, x), size=patch_map.shape[-2:], mode="bilinear",
                                align_corners=False)
            labels = cam_pseudo_labels(cam, y).flatten(1)
            logp = (torch.einsum("bkc,bcn->bkn", unit, patch_map.detach().flatten(2))
                    / self.temperature).log_softmax(dim=-1)
            loss = loss + self.cle_weight * class_patch_contrast(logp, labels, y)
        return loss


def cam_pseudo_labels(cam: torch.Tensor, y: torch.Tensor, background: float = 0.5, high: float = 0.5,
                      low: float = 0.25, ignore: int = 255) -> torch.Tensor:
    """ToCo's ``cam_to_label`` with ``ignore_mid``: ``cam`` [B, K, h, w] raw, ``y`` [B, K] labels.

    ReLU, keep the image's classes, divide each by its max (+1e-5); label = 1 + argmax, background
    where the max is at most ``background``; then ``ignore`` where the max is in (low, high] and
    background where it is at most ``low``. Returns [B, h, w] int64."""
    cam = F.relu(cam) * y[:, :, None, None]
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    value, index = cam.max(dim=1)
    labels = index + 1
    labels[value <= background] = 0
    labels[(value <= high) & (value > low)] = ignore
    labels[value <= low] = 0
    return labels


def class_patch_contrast(logp: torch.Tensor, labels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CLE: ``logp`` [B, K, N] log-softmax over patches of each class token; ``labels`` [B, N] (class
    index + 1); for every (image, present class) the mean of ``-logp`` over the patches labelled with
    that class (0 when none is), summed over classes and averaged over the images."""
    k = logp.shape[1]
    masks = (labels[:, None, :] == torch.arange(1, k + 1, device=labels.device)[None, :, None]).to(logp.dtype)
    per_class = -(logp * masks).sum(-1) / (masks.sum(-1) + 1e-4)  # [B, K]
    return (per_class * y).sum() / logp.shape[0]


def _training_head(method: str, model: torch.nn.Module, num_classes: int) -> torch.nn.Module | None:
    """A training-only module whose parameters are optimised with the model but never saved."""
    if method == "edam":
        return EDAMTrainingHead(model.out_channels, num_classes)
    if method == "more":
        return MoReTrainingHead(model.classifier.in_channels, num_classes, len(model.encoder.blocks),
                                temperature=MORE_DEMO_TEMPERATURE)
    return None


def _objective(method: str) -> Callable[..., torch.Tensor]:
    """``loss(model, head, x, y, step)`` of each method's demo training."""
    mlsm = F.multilabel_soft_margin_loss

    def cam(model, head, x, y, step):
        return mlsm(model(x), y)

    def edam(model, head, x, y, step):
        return mlsm(head(model, x), y)

    def more(model, head, x, y, step):
        return head(model, x, y, step)

    return {"cam": cam, "edam": edam, "getam": cam, "ad-cam": cam, "more": more}[method]


def _training_resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The demo training set's resize: antialiased float bicubic of the 0..255 image, clamped and
    rounded (how the shipped demo weights were trained; inference follows each method's own rule)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0, 255).round_()


def _load_training_set(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from wsss_bench.data import build_dataset
    from wsss_bench.inference.tta import normalise_image, to_tensor_image
    from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD

    ds = build_dataset("synthetic", root, "train")
    xs, ys = [], []
    for i in range(len(ds)):
        s = ds[i]
        img = _training_resize(to_tensor_image(s.image, "cpu"), (size, size))
        xs.append(normalise_image(img, IMAGENET_MEAN, IMAGENET_STD)[0])
        ys.append(torch.from_numpy(s.labels))
    return torch.stack(xs), torch.stack(ys)


def train_one(adapter: MethodAdapter, spec: DemoModel, x: torch.Tensor, y: torch.Tensor, seed: int,
              batch: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``adapter.model`` in place; returns a small training log."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = adapter.model
    model.train()
    # from scratch, batch norms learn their statistics; ResNet-38's train() keeps them frozen, as
    # EDAM and PSA do when they fine-tune ImageNet weights, which leaves a fresh network unnormalised
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    head = _training_head(spec.method, model, int(y.shape[1]))
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.15)
    loss_fn = _objective(spec.method)
    t0 = time.perf_counter()
    losses = []
    batch = batch or spec.batch
    sizes = spec.sizes or (spec.train_size,)
    for step in range(spec.steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        xb = x[idx]
        side = sizes[int(torch.randint(0, len(sizes), (1,), generator=g))]
        if side != xb.shape[-1]:
            xb = F.interpolate(xb, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = loss_fn(model, head, xb, y[idx], step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % 100 == 0:
            log(f"{spec.method}: step {step + 1}/{spec.steps} loss {np.mean(losses[-100:]):.4f}")
    model.eval()
    return {"seconds": round(time.perf_counter() - t0, 1), "final_loss": round(float(np.mean(losses[-50:])), 4)}


def manifest_entry(spec: DemoModel, target: Path, seed: int, info: dict[str, Any],
                   state: dict[str, torch.Tensor], command: str) -> dict[str, Any]:
    """The manifest record of one trained demo model (file, SHA-256, seed, recipe, command)."""
    return {
        "file": target.name, "sha256": sha256_file(target), "backbone": spec.backbone, "seed": seed,
        "steps": spec.steps, "train_size": spec.train_size, "sizes": list(spec.sizes or (spec.train_size,)),
        "batch": spec.batch, "lr": spec.lr, "optimizer": "AdamW (weight decay 1e-4), one-cycle schedule",
        "augmentation": "horizontal flip; each batch resized to a side drawn from sizes",
        "objective": spec.objective,
        "train_set": {**TRAIN_SET, "num_images": spec.num_train_images, "size": list(TRAIN_SET["size"]),
                      "split": "train"},
        "train_seconds": info["seconds"], "final_loss": info["final_loss"],
        "torch_threads": torch.get_num_threads(),
        "parameters": int(sum(v.numel() for v in state.values())),
        "command": command, "torch": torch.__version__,
    }


def train_demo_models(out: str | Path, seed: int = 0, methods: list[str] | None = None,
                      data_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Train every demo model and write ``<out>/<method>.safetensors`` and ``<out>/manifest.json``."""
    from safetensors.torch import save_file

    from wsss_bench.data.classes import SYNTHETIC
    from wsss_bench.data.synthetic import ensure_synthetic
    from wsss_bench.methods.registry import load_method

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = TRAIN_SET["size"]
    sets: dict[int, Path] = {}

    def training_data(count: int) -> Path:
        # the generator draws image i from (seed, i) alone, so a larger set extends a smaller one
        # and the val images of one set are never in the train split of another
        if count not in sets:
            name = f"wsss-bench-demo-train-{count}-seed{TRAIN_SET['seed']}-{lo}-{hi}"
            root = Path(data_dir) / name if data_dir is not None else Path(tempfile.gettempdir()) / name
            sets[count] = ensure_synthetic(root, count, TRAIN_SET["seed"], TRAIN_SET["size"])
        return sets[count]

    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # one training set in memory at a time (AD-CAM's, 10,800 images at 128 px, is 2.1 GB as
    # float32); models with the same set and size in a row share it
    loaded: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    for name in methods or list(DEMO_MODELS):
        spec = DEMO_MODELS[name]
        key = (spec.num_train_images, spec.train_size)
        if loaded is None or loaded[0] != key:
            loaded = None  # release the previous set before the next one is read
            loaded = (key, _load_training_set(training_data(key[0]), spec.train_size))
        x, y = loaded[1]
        torch.manual_seed(seed)
        adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=spec.backbone)
        adapter.build()
        info = train_one(adapter, spec, x, y, seed, log=log)
        state = {k: v.detach().contiguous().clone() for k, v in adapter.model.state_dict().items()}
        target = out / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            # no safetensors metadata: its keys are written in no fixed order, so the bytes (and the
            # SHA-256 in the manifest) would vary from one save to the next; the manifest holds them
            save_file(state, str(tmp))
        manifest[name] = manifest_entry(spec, target, seed, info, state, f"wsss-bench demo train --out {out} --seed {seed}")
        atomic_write_json(manifest_path, manifest)
        if log:
            log(f"{name}: saved {target} ({manifest[name]['parameters']:,} values, {info['seconds']} s)")
    return manifest_path
