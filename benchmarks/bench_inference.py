"""Inference throughput of the method adapters and a segmenter, through the real runner.

Every row runs ``run_method`` (or ``run_segmentation``) over a VOC-layout folder of random
375 x 500 images (written first, not timed) with randomly initialised weights, and reports
images/s as the runner measures it (start-up excluded), the share of the loop spent outside the
network's forward pass (decode, resize, fusion, evaluation), and ratios against the batch-1 CAM
baseline run in the same process.

    python benchmarks/bench_inference.py                      # CPU defaults (small sizes where noted)
    python benchmarks/bench_inference.py --device cuda --images 64 --full
    python benchmarks/bench_inference.py --rows cam-b1,cam-b8 --images 8

``--full`` uses the real sizes everywhere (ResNet-38 at width 1, ViT-B, DeepLab-v2 ResNet-101);
without it, the CPU defaults keep CAM at ResNet-50 but use narrow/tiny variants for the others.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsss_bench.data.classes import voc_palette
from wsss_bench.io import write_index_png
from wsss_bench.methods.registry import load_method


def make_voc_folder(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = [f"bench_{i:05d}" for i in range(n)]
    for i in ids:
        img = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "JPEGImages" / f"{i}.jpg", quality=90)
        mask = np.zeros((375, 500), np.uint8)
        for c in rng.choice(np.arange(1, 21), size=int(rng.integers(1, 4)), replace=False):
            y, x = int(rng.integers(0, 250)), int(rng.integers(0, 350))
            mask[y:y + 120, x:x + 150] = c
        write_index_png(root / "SegmentationClass" / f"{i}.png", mask, voc_palette())
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


class ForwardTimer:
    """Wraps an adapter class's forward (maps or logits) to sum the time spent in it."""

    def __init__(self, cls: type, attr: str, device: str):
        self.cls, self.attr, self.device, self.seconds = cls, attr, device, 0.0
        self.orig = getattr(cls, attr)

    def __enter__(self) -> ForwardTimer:
        orig, timer = self.orig, self

        def timed(adapter, *a, **k):
            if timer.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = orig(adapter, *a, **k)
            if timer.device.startswith("cuda"):
                torch.cuda.synchronize()
            timer.seconds += time.perf_counter() - t
            return out

        setattr(self.cls, self.attr, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.cls, self.attr, self.orig)


def random_checkpoint(method: str, backbone: str, tmp: Path) -> Path:
    adapter = load_method(method)(20, backbone=backbone)
    adapter.build()
    p = tmp / f"{method}-{backbone}.pth"
    torch.save(adapter.model.state_dict(), p)
    return p


def method_row(method: str, backbone: str, batch: int, data: Path, tmp: Path, args) -> dict:
    from wsss_bench.inference import RunConfig, run_method

    ckpt = random_checkpoint(method, backbone, tmp)
    cls = load_method(method)
    cfg = RunConfig(method=method, backbone=backbone, checkpoint=str(ckpt), dataset="voc", data_root=str(data),
                    split="train", device=args.device, precision=args.precision, batch_size=batch,
                    workers=args.workers, out=str(tmp / "records"), limit=args.images)
    with ForwardTimer(cls, "forward_maps", args.device) as ft:
        rec = run_method(cfg).record
    t = rec["timings"]
    return {"row": f"{method} ({backbone}), batch {batch}", "images": rec["num_images"],
            "images_per_second": t["images_per_second"], "seconds": t["seconds"],
            "outside_forward": 1 - ft.seconds / t["seconds"] if t["seconds"] else float("nan"),
            "peak_mb": t.get("peak_device_memory_mb") or t.get("peak_rss_mb")}


def segmentation_row(data: Path, tmp: Path, args) -> dict:
    from wsss_bench.data import build_dataset
    from wsss_bench.segmenters.registry import create_segmenter, load_segmenter
    from wsss_bench.segmenters.runner import run_segmentation

    hp = {} if args.full else {"width": 16, "blocks": [1, 1, 2, 1]}
    seg = create_segmenter("deeplabv2", 21, hparams=hp)
    ds = build_dataset("voc", data, "train")
    cls = load_segmenter("deeplabv2")
    with ForwardTimer(cls, "logits", args.device) as ft:
        rec, _ = run_segmentation(seg, ds, "standard", device=args.device, precision=args.precision,
                                  workers=args.workers, limit=args.seg_images)
    t = rec["timings"]
    label = "deeplabv2 (resnet101)" if args.full else "deeplabv2 (resnet101 layout, width 16, blocks 1,1,2,1)"
    return {"row": f"{label}, standard protocol (12 views)", "images": rec["num_images"],
            "images_per_second": t["images_per_second"], "seconds": t["seconds"],
            "outside_forward": 1 - ft.seconds / t["seconds"] if t["seconds"] else float("nan"),
            "peak_mb": t.get("peak_memory_mb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--edam-images", type=int, default=1)
    ap.add_argument("--seg-images", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="real sizes for every method")
    ap.add_argument("--rows", default="cam-b1,cam-b8,edam,getam,ad-cam,more,segmentation")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = args.full
    backbones = {"cam": "resnet50", "edam": "resnet38" if full else "resnet38-w0.25",
                 "getam": "vit_base" if full else "vit_tiny", "ad-cam": "vit_base" if full else "vit_tiny",
                 "more": "vit_base_patch16" if full else "vit_tiny_demo"}
    wanted = args.rows.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = make_voc_folder(tmp / "voc", max(args.images, args.seg_images, args.edam_images))
        rows = []
        for r in wanted:
            if r.startswith("cam-b"):
                rows.append(method_row("cam", backbones["cam"], int(r[5:]), data, tmp, args))
            elif r == "segmentation":
                rows.append(segmentation_row(data, tmp, args))
            else:
                n = args.edam_images if r == "edam" else args.images
                saved = args.images
                args.images = n
                rows.append(method_row(r, backbones[r], 1, data, tmp, args))
                args.images = saved
            print(f"  done: {rows[-1]['row']}", flush=True)
    dev = args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name()
    print(f"\ndevice: {dev}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
          f"{platform.machine()}; precision {args.precision}; input 375x500 random images, random weights, "
          f"native settings; workers {args.workers}")
    base = next((r["images_per_second"] for r in rows if r["row"].startswith("cam") and "batch 1" in r["row"]), None)
    print(f"{'row':72s} {'images':>6s} {'img/s':>8s} {'vs cam b1':>9s} {'outside fwd':>11s} {'peak MB':>8s}")
    for r in rows:
        ips = r["images_per_second"] or float("nan")
        ratio = ips / base if base else float("nan")
        print(f"{r['row']:72s} {r['images']:6d} {ips:8.3f} {ratio:9.2f} {100 * r['outside_forward']:10.1f}% "
              f"{r['peak_mb'] if r['peak_mb'] is not None else float('nan'):8.0f}")


if __name__ == "__main__":
    main()
