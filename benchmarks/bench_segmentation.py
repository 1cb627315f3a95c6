"""Final-segmentation throughput under the standard test-time protocol.

Times :func:`wsss_bench.segmenters.runner.predict_samples` (normalisation, 6 scales x flip = 12
forward views, upsampling, softmax-mean fusion, argmax) for a randomly initialised DeepLab-v2 on
random uint8 images of a fixed size; no data loading, no scoring. States device, threads, input
size, batch, seed and protocol; warms up once; synchronises CUDA; reports the median and the
spread (min..max) of images/s over repeats.

    python benchmarks/bench_segmentation.py                      # small width (16), CPU
    python benchmarks/bench_segmentation.py --full --images 2    # full ResNet-101, 2 images
    python benchmarks/bench_segmentation.py --device cuda --full --images 20 --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from wsss_bench.data.base import Sample
from wsss_bench.segmenters.base import STANDARD_TEST_SETTINGS
from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter
from wsss_bench.segmenters.runner import predict_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--full", action="store_true", help="full DeepLab-v2 ResNet-101 (width 64, 3-4-23-3 blocks)")
    ap.add_argument("--width", type=int, default=16, help="stem width when not --full (64 = full)")
    ap.add_argument("--blocks", default="1,1,2,1", help="blocks per stage when not --full")
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width-px", type=int, default=500)
    ap.add_argument("--images", type=int, default=4, help="images per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    hp = {} if a.full else {"width": a.width, "blocks": [int(b) for b in a.blocks.split(",")]}
    seg = DeepLabV2Segmenter(21, hparams=hp)
    seg.build()
    dev = torch.device(a.device)
    seg.model.to(dev).eval()
    rng = np.random.default_rng(a.seed)
    samples = [Sample(f"img{i}", rng.integers(0, 256, (a.height, a.width_px, 3), dtype=np.uint8),
                      np.zeros(20, np.float32), None) for i in range(a.images)]
    s = STANDARD_TEST_SETTINGS
    params = sum(p.numel() for p in seg.model.parameters()) / 1e6

    def run_all() -> None:
        for i in range(0, len(samples), a.batch):
            predict_samples(seg, samples[i:i + a.batch], s, dev, a.precision)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    predict_samples(seg, samples[:a.batch], s, dev, a.precision)  # warm-up
    rates = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run_all()
        rates.append(len(samples) / (time.perf_counter() - t0))
    name = "full ResNet-101" if a.full else f"width {a.width}, blocks {a.blocks}"
    print(f"DeepLab-v2 ({name}, {params:.1f} M parameters), device {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"precision {a.precision}")
    print(f"protocol: standard (scales {list(s.scales)}, flip, softmax-mean, no CRF; 12 views/image)")
    print(f"input {a.height}x{a.width_px}, batch {a.batch}, {a.images} images x {a.repeats} repeats, seed {a.seed}")
    print(f"images/s: median {statistics.median(rates):.3f} (min {min(rates):.3f}, max {max(rates):.3f})")


if __name__ == "__main__":
    main()
