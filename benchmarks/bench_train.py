"""Training time per iteration of ``wsss-bench train-seg`` recipes: the tiny network and the real one.

Each recipe's optimiser step exactly as the training loop runs it
(:func:`wsss_bench.training.loop.train_step`: micro-batches with gradient accumulation, the
recipe's loss, optimiser, parameter groups, frozen or synchronised batch norms, autocast), on random
crops of the recipe's size (no data loading: that is measured separately by ``--end-to-end``), one
process. Reported: median and spread of the seconds per iteration after warm-up, images/s, peak
memory (process RSS on the CPU; device memory on CUDA).

- ``tiny-synthetic``: DeepLab-v2 of width 8, crop 96, batch 8 (2 x 4).
- ``deeplabv2-voc``: DeepLab-v2 ResNet-101, crop 321, batch 10 (2 micro-batches of 5), the multi-scale
  loss over scales 1.0, 0.75, 0.5, frozen batch norms, SGD with the 1x/10x/20x groups (VOC's 21 classes).

``--end-to-end`` also times the whole ``train_segmenter`` call of the tiny recipe on the demo's synthetic
set (160 images, seed 0: pseudo labels = its ground truth), data loading, checkpoints, plot and the
``val`` scoring included: what one demo row costs.

Usage::

    python benchmarks/bench_train.py --recipes tiny-synthetic deeplabv2-voc --iterations 3 --threads 2
    python benchmarks/bench_train.py --recipes deeplabv2-voc --device cuda --precision bf16 --iterations 20
    python benchmarks/bench_train.py --recipes tiny-synthetic --end-to-end --threads 1
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsss_bench.segmenters.registry import create_segmenter
from wsss_bench.training.init import init_head
from wsss_bench.training.loop import make_optimizer, train_step
from wsss_bench.training.objective import BNStatSync, TrainObjective
from wsss_bench.training.recipes import HEAD_PREFIXES, build_param_groups, load_recipe

CLASSES = {"tiny-synthetic": 6, "deeplabv2-voc": 21, "deeplabv2-coco": 81, "deeplabv3plus-voc": 21}


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 if sys.platform != "darwin" else 1024.0**2)


def bench_recipe(name: str, iterations: int, warmup: int, device: torch.device, precision: str) -> dict:
    recipe = load_recipe(name)
    torch.manual_seed(0)
    seg = create_segmenter(recipe.segmenter, CLASSES.get(name, 21), backbone=recipe.backbone, hparams=recipe.hparams)
    heads = HEAD_PREFIXES[seg.name]
    init_head(seg.model, heads, recipe.head_init)
    net = seg.model.to(device)
    groups, _ = build_param_groups(net, recipe, heads)
    opt = make_optimizer([{k: v for k, v in g.items() if k != "names"} for g in groups], recipe)
    objective = TrainObjective(net, recipe.loss, recipe.msc_scales).to(device).train()
    if recipe.bn == "frozen":
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    bn_sync = BNStatSync(net) if recipe.bn == "train" else None
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    accum = recipe.batch // recipe.micro_batch
    g = torch.Generator().manual_seed(0)
    c, n = recipe.crop, CLASSES.get(name, 21)

    def micro():
        for _ in range(accum):
            x = torch.randn(recipe.micro_batch, 3, c, c, generator=g) * 50
            y = torch.randint(0, n, (recipe.micro_batch, c, c), generator=g)
            yield x, y

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for it in range(warmup + iterations):
        batches = list(micro())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_step(objective, opt, recipe, it, iter(batches), accum=accum, seed=0, rank=0, world=1, device=device,
                   precision=precision, scaler=scaler, bn_sync=bn_sync)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"recipe": name, "crop": c, "batch": recipe.batch, "micro_batch": recipe.micro_batch, "loss": recipe.loss,
            "bn": recipe.bn, "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "median_s": med,
            "min_s": min(times), "max_s": max(times), "images_per_s": recipe.batch / med,
            "peak_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else peak_rss_mb(),
            "iterations": len(times)}


def bench_end_to_end(device: str, workers: int) -> dict:
    from wsss_bench.data.synthetic import generate
    from wsss_bench.training import train_demo_segmenter

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "demo", num_images=160, seed=0, size=(96, 128))
        t0 = time.perf_counter()
        rec = train_demo_segmenter(root / "SegmentationClass", root, Path(tmp) / "seg", name="gt", device=device,
                                   workers=workers)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_s": rec["training"]["seconds"], "iterations": rec["training"]["iterations"],
            "val_miou": rec["metrics"]["miou"], "eval_s": rec["timings"]["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["tiny-synthetic", "deeplabv2-voc"])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--end-to-end", action="store_true", help="also time train_demo_segmenter on the demo set")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {args.threads} thread(s), precision {args.precision}, "
          f"seed 0, {args.warmup} warm-up + {args.iterations} timed iteration(s) per recipe")
    for r in args.recipes:
        res = bench_recipe(r, args.iterations, args.warmup, device, args.precision)
        mem = "device" if device.type == "cuda" else "RSS"
        print(f"{res['recipe']:>18}: crop {res['crop']}, batch {res['batch']} ({res['batch'] // res['micro_batch']} x "
              f"{res['micro_batch']}), loss {res['loss']}, BN {res['bn']}, {res['params_m']:.1f} M params | "
              f"{res['median_s']:.3f} s/iteration (min {res['min_s']:.3f}, max {res['max_s']:.3f}, "
              f"n={res['iterations']}) | {res['images_per_s']:.2f} images/s | peak {mem} {res['peak_mb']:.0f} MB",
              flush=True)
    if args.end_to_end:
        e = bench_end_to_end(args.device, args.workers)
        print(f"end to end, tiny-synthetic on the demo set (120 train / 40 val images): {e['wall_s']:.1f} s wall "
              f"({e['iterations']} iterations in {e['train_s']:.1f} s, val scoring {e['eval_s']:.1f} s), "
              f"val mIoU {100 * e['val_miou']:.1f}")


if __name__ == "__main__":
    main()
