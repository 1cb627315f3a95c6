"""Training the small demo models on the synthetic set (``wsss-bench demo train``).

Each built-in method gets a small network of its own architecture, trained from a seed on CPU with
the method's classification objective on image-level labels (multi-label soft margin):

- ``cam``: the ResNet classifier after global average pooling (IRN's ``Net.forward``).
- ``edam``: global average pooling of the raw DA-layer outputs, the extra channel trained as an
  always-present background class so the per-pixel L2 normalisation has a background to favour.
  EDAM's collaborative multi-attention module is a training-time component we do not build; it is
  left out of the demo objective (stated here and in the weights manifest).
- ``getam``: GETAM's classification path (``cls_head`` on the pooled block-11 tokens).
- ``ad-cam``: the patch-token classifier after global average pooling.
- ``more``: the classifier after global max pooling (MoRe's ``pooling='gmp'``) plus the same loss on
  the global-max-pooled LAM of the GCR-refined class tokens, our stand-in for MoRe's class-token
  objectives so that the LAM is trained (stated in the manifest).

Training set: ``TRAIN_SET`` (seed 1234, its ``train`` split), never the demo set (seed 0). The
recipes in ``DEMO_MODELS`` were chosen on the ``val`` split of ``TRAIN_SET`` only. Images are
pre-resized once to the method's training size; each step draws a batch of 32, flips it at random
and, with ``sizes``, resizes it to a side drawn from ``sizes`` (the CNNs see several scales, as the
multi-scale inference does). AdamW with a one-cycle schedule. Small training sets were memorised
(loss near 0, maps on the background), hence 1,080 training images. The tiny ViTs trained from
scratch in CPU minutes classify but localise poorly: their maps sit only a little above the centre
prior (see the README's demo section). The model is saved as safetensors in the layout its adapter
loads (``wsss_bench/demo/weights/<method>.safetensors``), with a manifest entry
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


DEMO_MODELS: dict[str, DemoModel] = {
    "cam": DemoModel("cam", "resnet-tiny", 96, 2000, 1e-2, "multi-label soft margin on GAP logits",
                     batch=32, sizes=(64, 80, 96)),
    "edam": DemoModel("edam", "resnet38-w0.0625", 64, 600, 1e-2,
                      "multi-label soft margin on GAP of the DA layer (extra channel = background, always on); "
                      "no collaborative multi-attention", batch=32),
    "getam": DemoModel("getam", "vit_tiny_demo", 96, 3000, 1e-3, "multi-label soft margin on cls_head logits",
                       batch=32),
    "ad-cam": DemoModel("ad-cam", "vit_tiny_demo", 96, 3000, 1e-3,
                        "multi-label soft margin on the GAP of the patch-token classifier", batch=32),
    "more": DemoModel("more", "vit_tiny_demo", 160, 1200, 1e-3,
                      "multi-label soft margin on GMP classifier logits + on GMP of the GCR-refined LAM", batch=32),
}
TRAIN_SET = {"num_images": 1440, "seed": 1234, "size": (96, 128)}


def _objective(method: str) -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    mlsm = F.multilabel_soft_margin_loss

    def cam(model, x, y):
        return mlsm(model(x), y)

    def edam(model, x, y):
        raw = model.mask_layer(model.features(x)).mean(dim=(2, 3))
        target = torch.cat([y, torch.ones_like(y[:, :1])], dim=1)
        return mlsm(raw, target)

    def more(model, x, y):
        tokens, patch_map = model.features(x)
        logits = model.classifier(F.adaptive_max_pool2d(patch_map, 1)).flatten(1)
        refined = model.graph_layer(tokens, patch_map.flatten(2).transpose(1, 2))
        lam = torch.einsum("bchw,bkc->bkhw", patch_map, refined)
        return mlsm(logits, y) + mlsm(lam.amax(dim=(2, 3)), y)

    return {"cam": cam, "edam": edam, "getam": cam, "ad-cam": cam, "more": more}[method]


def _load_training_set(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from wsss_bench.data import build_dataset
    from wsss_bench.inference.tta import normalise_image, resize_image, to_tensor_image
    from wsss_bench.methods.base import IMAGENET_MEAN, IMAGENET_STD

    ds = build_dataset("synthetic", root, "train")
    xs, ys = [], []
    for i in range(len(ds)):
        s = ds[i]
        img = resize_image(to_tensor_image(s.image, "cpu"), (size, size))
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
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
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
        loss = loss_fn(model, xb, y[idx])
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
        "train_set": {**TRAIN_SET, "size": list(TRAIN_SET["size"]), "split": "train"},
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
    if data_dir is None:
        lo, hi = TRAIN_SET["size"]
        data_dir = Path(tempfile.gettempdir()) / (f"wsss-bench-demo-train-{TRAIN_SET['num_images']}"
                                                  f"-seed{TRAIN_SET['seed']}-{lo}-{hi}")
    data = ensure_synthetic(Path(data_dir), TRAIN_SET["num_images"], TRAIN_SET["seed"], TRAIN_SET["size"])
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in methods or list(DEMO_MODELS):
        spec = DEMO_MODELS[name]
        if spec.train_size not in cache:
            cache[spec.train_size] = _load_training_set(data, spec.train_size)
        x, y = cache[spec.train_size]
        torch.manual_seed(seed)
        adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=spec.backbone)
        adapter.build()
        info = train_one(adapter, spec, x, y, seed, log=log)
        state = {k: v.detach().contiguous().clone() for k, v in adapter.model.state_dict().items()}
        target = out / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            save_file(state, str(tmp), metadata={"method": name, "backbone": spec.backbone, "seed": str(seed)})
        manifest[name] = manifest_entry(spec, target, seed, info, state, f"wsss-bench demo train --out {out} --seed {seed}")
        atomic_write_json(manifest_path, manifest)
        if log:
            log(f"{name}: saved {target} ({manifest[name]['parameters']:,} values, {info['seconds']} s)")
    return manifest_path
