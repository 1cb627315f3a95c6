"""The tiny recipe's packaged initial weights: the analogue of ImageNet weights for the demo segmenter.

Real recipes start DeepLab from an ImageNet classifier; a segmenter trained from scratch in a minute
on a CPU learns where the shapes are but hardly which shape each is (val mIoU 18.6 on ground-truth
masks against 14.0 on the centre prior's blobs, see ``tests/test_train_quality.py``). So the
``tiny-synthetic`` recipe starts from a backbone pretrained the way ImageNet weights are: on
**image-level classification**, on images the segmenter is never scored on. The tiny DeepLab-v2's
backbone (its ``layer1``-``layer5``; the ASPP head is not kept) with a 1x1 classifier after global
average pooling, trained with the multi-label soft margin on the image-level labels of the demo
training set's ``train`` split (``wsss_bench.demo.train.TRAIN_SET``: generator seed 1234, 1,440
images, never the demo set (seed 0) nor the tests' sets), from a seed, on one CPU thread.

Reproduce the shipped file (``wsss_bench/demo/weights/``, beside the demo's method weights)::

    python -m wsss_bench.training.backbone --out wsss_bench/demo/weights --seed 0

It writes ``tiny-backbone.safetensors`` (the segmenter's own layout, so ``--init`` loads it strictly)
and ``tiny-backbone.json`` (SHA-256, seed, steps, schedule, data, seconds, final loss, command).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import atomic_path, atomic_write_json, sha256_file

FILE = "tiny-backbone.safetensors"
MANIFEST = "tiny-backbone.json"
#: The pretraining (every number is recorded in the manifest).
PRETRAIN = {"steps": 2000, "batch": 32, "lr": 5e-3, "weight_decay": 1e-4, "train_size": 96,
            "sizes": (64, 80, 96), "pct_start": 0.1}


def weights_dir() -> Path:
    """Where the packaged file lies: beside the demo's method weights (package data)."""
    from wsss_bench.demo import weights_dir as demo_weights_dir

    return demo_weights_dir()


def packaged_init(name: str) -> Path:
    """A packaged initial-weights file by name (a recipe's ``init_file``), which must exist."""
    p = weights_dir() / name
    if "/" in name or "\\" in name or not p.is_file():
        raise WsssBenchError(f"packaged initial weights {name!r} not found (reproduce them with "
                             f"`python -m wsss_bench.training.backbone --out {weights_dir()}`)", p)
    return p


def tiny_segmenter(num_classes: int = 6) -> Any:
    """The ``tiny-synthetic`` recipe's segmenter (its hyper-parameters read from the recipe)."""
    from wsss_bench.segmenters.registry import create_segmenter
    from wsss_bench.training.recipes import load_recipe

    r = load_recipe("tiny-synthetic")
    return create_segmenter(r.segmenter, num_classes, backbone=r.backbone, hparams=r.hparams)


class BackboneClassifier(nn.Module):
    """The segmenter's backbone (every child but the ASPP) -> global average pool -> 1x1 classifier."""

    def __init__(self, net: nn.Module, num_foreground: int):
        super().__init__()
        self.body = nn.Sequential(*[m for name, m in net.named_children() if name != "aspp"])
        with torch.no_grad():
            channels = self.body(torch.zeros(1, 3, 32, 32)).shape[1]
        self.classifier = nn.Conv2d(channels, num_foreground, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x)).mean(dim=(2, 3))


def load_images(root: Path, seg: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``train`` split of ``root``: images normalised as the segmenter takes them, resized to
    ``size`` x ``size`` (bilinear), and their multi-hot image-level labels."""
    from wsss_bench.data import build_dataset
    from wsss_bench.training.data import normalise_image

    ds = build_dataset("synthetic", root, "train")
    xs, ys = [], []
    for i in range(len(ds)):
        s = ds[i]
        x = normalise_image(s.image, seg.mean, seg.std, seg.channel_order)
        xs.append(F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0])
        ys.append(torch.from_numpy(np.asarray(s.labels, dtype=np.float32)))
    return torch.stack(xs), torch.stack(ys)


def pretrain(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, log: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train the tiny segmenter's backbone on (images ``x``, labels ``y``); returns the segmenter and a log."""
    p = PRETRAIN
    torch.manual_seed(seed)
    seg = tiny_segmenter()
    model = BackboneClassifier(seg.model, y.shape[1]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], total_steps=steps, pct_start=p["pct_start"])
    g = torch.Generator().manual_seed(seed)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (p["batch"],), generator=g)
        side = p["sizes"][int(torch.randint(0, len(p["sizes"]), (1,), generator=g))]
        xb = x[idx]
        flip = torch.rand(p["batch"], generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        if side != xb.shape[-1]:
            xb = F.interpolate(xb, size=(side, side), mode="bilinear", align_corners=False)
        loss = F.multilabel_soft_margin_loss(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return seg, {"seconds": round(time.perf_counter() - t0, 1), "final_loss": round(float(np.mean(losses[-100:])), 4)}


def build_backbone(out: str | Path, seed: int = 0, steps: int | None = None, data_dir: str | Path | None = None,
                   num_images: int | None = None, log: Any = None) -> Path:
    """Pretrain and write ``<out>/tiny-backbone.safetensors`` and its manifest; returns the weights' path."""
    from safetensors.torch import save_file

    from wsss_bench.data.synthetic import ensure_synthetic
    from wsss_bench.demo.train import TRAIN_SET

    steps = PRETRAIN["steps"] if steps is None else int(steps)
    n = TRAIN_SET["num_images"] if num_images is None else int(num_images)
    lo, hi = TRAIN_SET["size"]
    name = f"wsss-bench-demo-train-{n}-seed{TRAIN_SET['seed']}-{lo}-{hi}"
    root = ensure_synthetic((Path(data_dir) if data_dir else Path(tempfile.gettempdir())) / name, n,
                            TRAIN_SET["seed"], TRAIN_SET["size"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same numbers on any machine with this torch build
    try:
        seg0 = tiny_segmenter()
        x, y = load_images(root, seg0, PRETRAIN["train_size"])
        seg, info = pretrain(x, y, seed, steps, log)
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().contiguous().clone() for k, v in seg.model.state_dict().items() if not k.startswith("aspp.")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / FILE
    with atomic_path(target) as tmp:
        # no metadata: safetensors writes a metadata dict's keys in no fixed order, so the bytes (and the
        # SHA-256) would vary from run to run; the manifest records the seed
        save_file(state, str(tmp))
    command = f"python -m wsss_bench.training.backbone --out {out} --seed {seed}" + \
        (f" --steps {steps}" if steps != PRETRAIN["steps"] else "") + (f" --images {n}" if num_images else "")
    atomic_write_json(out / MANIFEST, {
        "file": FILE, "sha256": sha256_file(target), "seed": seed, "steps": steps,
        "objective": "multi-label soft margin on the global average pool of a 1x1 classifier over layer5",
        "optimizer": f"AdamW (lr {PRETRAIN['lr']}, weight decay {PRETRAIN['weight_decay']}), one-cycle schedule",
        "batch": PRETRAIN["batch"], "train_size": PRETRAIN["train_size"], "sizes": list(PRETRAIN["sizes"]),
        "augmentation": "horizontal flip; each batch resized to a side drawn from sizes",
        "train_set": {"num_images": n, "seed": TRAIN_SET["seed"], "size": [lo, hi], "split": "train",
                      "images": int(x.shape[0])},
        "parameters": int(sum(v.numel() for v in state.values())), "torch_threads": 1, "torch": torch.__version__,
        **info, "command": command})
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsss_bench.training.backbone",
                                 description="Pretrain the tiny-synthetic recipe's backbone on image-level labels.")
    ap.add_argument("--out", required=True, help="folder for tiny-backbone.safetensors and tiny-backbone.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help=f"default {PRETRAIN['steps']}")
    ap.add_argument("--images", type=int, default=None, help="images generated (default: the demo training set's)")
    ap.add_argument("--data-dir", default=None, help="where to generate the training set (default: the temp dir)")
    a = ap.parse_args(argv)
    path = build_backbone(a.out, a.seed, a.steps, a.data_dir, a.images, log=print)
    print(json.dumps(json.loads((path.parent / MANIFEST).read_text()), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
