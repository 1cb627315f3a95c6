"""Two CPU processes under ``torchrun`` (gloo) give exactly the single-process record.

The distributed run goes through the real command line, ``torchrun --nproc-per-node 2 -m wsss_bench run``,
with explicit rendezvous flags on a free port, the way a user launches it. The reference is the same
command in one process. Sums of int64 histograms are exact, so every metric must be equal, not close.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cam_helpers import write_tiny_cam_checkpoint
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.synthetic import generate

EXACT_KEYS = ("metrics", "sweep", "best_threshold", "best_threshold_index", "calibrated", "native",
              "fingerprint", "num_images", "counts_threshold", "classes", "settings", "checkpoint_sha256")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WSSS_BENCH_DEBUG="1")
    return env


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    # 14 images -> 11 train ids: an odd count, so the two shards differ in size (6 and 5)
    return generate(tmp_path_factory.mktemp("dist") / "shapes", num_images=14, seed=5, size=(40, 56))


@pytest.fixture(scope="module")
def cam_ckpt(tmp_path_factory):
    return write_tiny_cam_checkpoint(tmp_path_factory.mktemp("ckpt") / "cam_tiny.pth", seed=1)


def load_record(out: Path, stem: str) -> tuple[dict, dict[str, np.ndarray]]:
    rec = json.loads((out / f"{stem}.json").read_text())
    with np.load(out / rec["per_image_counts"]) as z:
        counts = {k: z[k] for k in z.files}
    return rec, counts


def test_torchrun_two_gloo_processes_equal_single_process_record(synth, cam_ckpt, tmp_path):
    args = ["run", "--method", "cam", "--backbone", "resnet-tiny", "--checkpoint", str(cam_ckpt),
            "--data-root", str(synth), "--split", "train", "--settings", "standard", "--scales", "1.0,0.5",
            "--device", "cpu", "--workers", "0", "--name", "cam-dist"]
    single_out, dist_out, dist_cams = tmp_path / "single", tmp_path / "dist", tmp_path / "dist-cams"
    single_pseudo, dist_pseudo = tmp_path / "single-pseudo", tmp_path / "dist-pseudo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): the same summation order
    try:
        assert main([*args, "--out", str(single_out), "--save-pseudo", str(single_pseudo)]) == 0
    finally:
        torch.set_num_threads(threads)

    port = free_port()
    cmd = [*torchrun(), "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "wsss_bench", *args, "--out", str(dist_out), "--save-cams", str(dist_cams),
           "--save-pseudo", str(dist_pseudo)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, ca = load_record(single_out, "cam-dist")
    b, cb = load_record(dist_out, "cam-dist")
    for key in EXACT_KEYS:
        assert b[key] == a[key], key
    assert b["timings"]["world_size"] == 2 and a["timings"]["world_size"] == 1
    ids = (synth / "ImageSets/Segmentation/train.txt").read_text().split()
    assert b["num_images"] == len(ids) == 11
    # every image was computed exactly once, by one of the two ranks
    assert b["cache"] == {"cached": 0, "computed": 11, "recomputed_corrupt": 0}
    assert sorted(p.stem for p in dist_cams.glob("*.npz")) == sorted(ids)
    # per-image counts gathered from both ranks equal the single-process ones, image by image
    assert sorted(ca) == sorted(cb)
    assert list(cb["ids"]) == sorted(ids)
    for k in ca:
        np.testing.assert_array_equal(cb[k], ca[k], err_msg=k)
    # each rank wrote the pseudo labels of its shard at the all-rank threshold: the same PNGs
    assert sorted(p.name for p in dist_pseudo.glob("*.png")) == sorted(f"{i}.png" for i in ids)
    for i in ids:
        with Image.open(single_pseudo / f"{i}.png") as x, Image.open(dist_pseudo / f"{i}.png") as y:
            np.testing.assert_array_equal(np.array(y), np.array(x), err_msg=i)
    # only rank 0 wrote: one record, one counts file, no temporary leftovers
    assert sorted(p.name for p in dist_out.iterdir()) == ["cam-dist.counts.npz", "cam-dist.json"]


def test_a_bad_image_on_one_rank_is_one_line_from_each_rank_and_no_record(synth, cam_ckpt, tmp_path):
    import shutil

    data = tmp_path / "shapes"
    shutil.copytree(synth, data)
    ids = (data / "ImageSets/Segmentation/train.txt").read_text().split()
    bad = data / "JPEGImages" / f"{ids[1]}.jpg"  # rank 1's first image
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    env = {k: v for k, v in child_env().items() if k != "WSSS_BENCH_DEBUG"}
    cmd = [*torchrun(), "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "wsss_bench", "run", "--method", "cam", "--backbone", "resnet-tiny", "--checkpoint",
           str(cam_ckpt), "--data-root", str(data), "--device", "cpu", "--workers", "0", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # the failing rank names the file and the problem; the other rank says why it stops, one line each
    assert any(str(bad) in line or bad.name in line for line in ours), proc.stderr[-2000:]
    assert any("another rank stopped" in line for line in ours), proc.stderr[-2000:]
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr
    assert not out.exists() or not list(out.glob("*.json"))
