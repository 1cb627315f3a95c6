"""One-pass threshold sweep vs a single threshold vs the naive T-pass loop.

Synthetic VOC-sized data: N images (default 1,464) of 375 x 500 with 1-3 classes each, 21
classes, ignore pixels; a pool of distinct images is generated first and cycled (generation is
not timed). Prints seconds and the two ratios the evaluation-engine issue targets:
sweep / single-threshold (target <= 1.5) and naive / sweep (target >= 30).

    python benchmarks/bench_sweep.py [--images 1464] [--naive-images 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.sweep import SweepEvaluator, quantise_scores, top_class


def make_pool(n: int, C: int, seed: int, device: str):
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        classes = np.sort(rng.choice(np.arange(1, C), size=k, replace=False))
        scores = torch.from_numpy(rng.random((k, 375, 500), dtype=np.float32)).to(device)
        gt = rng.integers(0, C, size=(375, 500)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        pool.append((scores, torch.from_numpy(classes).to(device), torch.from_numpy(gt).to(device)))
    return pool


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_sweep(pool, n, C, T, device):
    ev = SweepEvaluator(C, T, device=device)
    sync(device)
    t = time.perf_counter()
    for i in range(n):
        s, c, g = pool[i % len(pool)]
        ev.update(s, c, g, image_id=f"{i:06d}")
    ev.results()
    sync(device)
    return time.perf_counter() - t


def time_single(pool, n, C, T, device, j=50):
    """One threshold: hard label from the maps, then the confusion evaluator (with per-image counts)."""
    ev = ConfusionEvaluator(C, device=device)
    sync(device)
    t = time.perf_counter()
    for i in range(n):
        s, c, g = pool[i % len(pool)]
        m, k = top_class(s, c)
        label = torch.where(quantise_scores(m, T) >= j, k, torch.zeros_like(k))
        ev.update(label, g, image_id=f"{i:06d}")
    ev.metrics()
    sync(device)
    return time.perf_counter() - t


def time_naive(pool, n, C, T, device):
    """T passes: for every threshold, build the label and count a confusion matrix."""
    evs = [ConfusionEvaluator(C, device=device, keep_per_image=False) for _ in range(T)]
    sync(device)
    t = time.perf_counter()
    for i in range(n):
        s, c, g = pool[i % len(pool)]
        m, k = top_class(s, c)
        q = quantise_scores(m, T)
        for j in range(T):
            evs[j].update(torch.where(q >= j, k, torch.zeros_like(k)), g)
    [e.metrics() for e in evs]
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1464)
    ap.add_argument("--naive-images", type=int, default=20)
    ap.add_argument("--pool", type=int, default=40)
    ap.add_argument("--thresholds", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    C, T = 21, a.thresholds
    pool = make_pool(a.pool, C, a.seed, a.device)
    time_sweep(pool, 5, C, T, a.device)  # warm-up
    time_single(pool, 5, C, T, a.device)
    sweep = time_sweep(pool, a.images, C, T, a.device)
    single = time_single(pool, a.images, C, T, a.device)
    naive_sub = time_naive(pool, a.naive_images, C, T, a.device)
    naive = naive_sub * a.images / a.naive_images
    print(f"device {a.device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); {a.images} images 375x500, 1-3 classes, C={C}, T={T}")
    print(f"one-pass sweep, T={T}:        {sweep:8.2f} s  ({a.images / sweep:7.1f} images/s)")
    print(f"single threshold:            {single:8.2f} s  ({a.images / single:7.1f} images/s)")
    print(f"naive T-pass loop (scaled):  {naive:8.2f} s  (measured {naive_sub:.2f} s on {a.naive_images} images)")
    print(f"ratio sweep / single:        {sweep / single:8.2f}   (target <= 1.5)")
    print(f"ratio naive / sweep:         {naive / sweep:8.1f}   (target >= 30)")


if __name__ == "__main__":
    main()
