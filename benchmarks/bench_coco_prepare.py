"""Time ``datasets prepare coco`` (semantic-mask building) in seconds per 1,000 instances.

No COCO data can be downloaded here, so the script writes a synthetic ``instances_val2014.json``
with COCO-like statistics: 640x480 images, 7 instances per image on average (COCO train2014 has
604,907 instances over 82,783 images, 7.3 per image), random star-shaped polygons of 12-40
vertices, one or two parts, about 1% crowd regions as uncompressed RLE, and some empty images.
It then runs :func:`wsss_bench.data.coco.prepare_coco_masks` (JSON parse, SHA-256, rasterisation,
PNG writing, manifest) with 1 and with N worker processes and reports the median of the repeats.

Usage::

    python benchmarks/bench_coco_prepare.py --images 400 --workers 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from wsss_bench.data.classes import COCO_CATEGORY_IDS
from wsss_bench.data.coco import prepare_coco_masks


def star_polygon(rng: np.random.Generator, w: int, h: int) -> list[float]:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(10, 0.35 * min(w, h))
    n = int(rng.integers(12, 41))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + rad * np.cos(ang), 0, w - 1)
    ys = np.clip(cy + rad * np.sin(ang), 0, h - 1)
    return [round(float(v), 2) for xy in zip(xs, ys, strict=True) for v in xy]


def polygon_area(p: list[float]) -> float:
    x, y = np.asarray(p[0::2]), np.asarray(p[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def crowd_rle(rng: np.random.Generator, w: int, h: int) -> dict:
    m = np.zeros((h, w), dtype=np.uint8)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    m[y0:y0 + int(rng.integers(20, h // 2)), x0:x0 + int(rng.integers(20, w // 2))] = 1
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def make_instances(path: Path, num_images: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    aid = 1
    for i in range(num_images):
        w, h = 640, 480
        images.append({"id": i + 1, "file_name": f"COCO_val2014_{i + 1:012d}.jpg", "width": w, "height": h})
        if rng.uniform() < 0.01:
            continue  # an image without annotations
        for _ in range(int(rng.poisson(6.3)) + 1):
            cat = int(rng.choice(COCO_CATEGORY_IDS))
            if rng.uniform() < 0.01:
                seg = crowd_rle(rng, w, h)
                area = float(sum(seg["counts"][1::2]))
                anns.append({"id": aid, "image_id": i + 1, "category_id": cat, "iscrowd": 1,
                             "area": area, "segmentation": seg, "bbox": [0, 0, 1, 1]})
            else:
                parts = [star_polygon(rng, w, h) for _ in range(1 if rng.uniform() < 0.8 else 2)]
                anns.append({"id": aid, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                             "area": sum(polygon_area(p) for p in parts), "segmentation": parts,
                             "bbox": [0, 0, 1, 1]})
            aid += 1
    cats = [{"id": c, "name": str(c)} for c in COCO_CATEGORY_IDS]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return len(anns)


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (the worker pools)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        (root / "val2014").mkdir(parents=True)
        n_inst = make_instances(root / "annotations" / "instances_val2014.json", args.images, args.seed)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}")
        print(f"synthetic instances: {args.images} images 640x480, {n_inst} instances, seed {args.seed}")
        print(f"load average before: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print("workers | median wall s | wall s per 1,000 inst. | CPU s per 1,000 inst. | wall runs")
        for w in args.workers:
            times, cpus = [], []
            for r in range(args.repeats):
                c0 = _cpu()
                t0 = time.perf_counter()
                prepare_coco_masks(root, "val", cache=Path(tmp) / f"cache_w{w}_r{r}", workers=w)
                times.append(time.perf_counter() - t0)
                cpus.append(_cpu() - c0)
            med, cpu = statistics.median(times), statistics.median(cpus)
            print(f"{w:7d} | {med:13.2f} | {1000 * med / n_inst:22.3f} | {1000 * cpu / n_inst:21.3f} | "
                  + ", ".join(f"{t:.2f}" for t in times))


if __name__ == "__main__":
    main()
