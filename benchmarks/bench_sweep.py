"""``wsss-bench eval`` against outside yardsticks, whole processes, quiet and under CPU load.

On the same generated maps and masks (VOC-sized: 375 x 500, 21 classes, 1-3 classes an image,
IRN-style ``.npy`` dicts and palette PNG masks; COCO-sized: 480 x 640, 81 classes, 1-10 classes an
image), each of these runs as its own process, in rotating rounds, and the median wall time is
reported:

- ``wsss-bench eval --cams`` (the 100-threshold sweep, native rule, per-image counts, record);
- IRN's ``step/eval_cam.py`` procedure at ONE threshold (re-implemented here from reading it: the
  padded argmax, all labels and predictions held, chainercv's confusion, nanmean), and its loop
  over 100 thresholds (measured on the first ``--irn100-images`` images and scaled to N);
- a plain numpy one-histogram sweep (argmax, searchsorted into the thresholds, one bincount);
- the I/O floor: reading the maps and masks, nothing else;
- hard masks: ``wsss-bench eval --pred`` against a numpy bincount loop over the same PNGs.

"busy" rounds run two CPU-bound processes beside each command. The script also prints each
command's own in-process time (after its imports) and peak memory, the load average, and the
ratios the evaluation issue sets as goals. The ``load`` column is the median 1-minute load average
when each command started (other users of the machine included).

    python benchmarks/bench_sweep.py --images 200,1464 --rounds 5 [--coco-images 500,2000]
    python benchmarks/bench_sweep.py --scan-workers --images 1464   # which --workers is fastest

Distinct files: a pool of ``--pool`` images per dataset is generated; further ids are hard links
to pool files (the page cache holds the pool; every run reads warm files, as after a first pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def _smooth(rng, k, h, w):
    """k smooth maps in [0, 1] (bilinear upsampling of a coarse grid), like normalised CAMs."""
    gh, gw = max(2, h // 32), max(2, w // 32)
    coarse = rng.random((k, gh, gw)).astype(np.float32) ** 2
    ys = np.linspace(0, gh - 1, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    out = []
    for c in coarse:
        top = c[y0][:, x0] * (1 - wx) + c[y0][:, x1] * wx
        bot = c[y1][:, x0] * (1 - wx) + c[y1][:, x1] * wx
        m = top * (1 - wy) + bot * wy
        out.append(m / m.max())
    return np.stack(out).astype(np.float32)


def generate(root: Path, n: int, pool: int, C: int, h: int, w: int, kmax: int, seed: int,
             tensors: bool = False) -> None:
    """``root/{cams,gt,pred}``: n ids; the first ``pool`` distinct, the rest hard links."""
    from PIL import Image

    marker = root / "done.json"
    spec = {"n": n, "pool": pool, "C": C, "h": h, "w": w, "kmax": kmax, "seed": seed, "tensors": tensors}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("cams", "gt", "pred"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pal = np.zeros((256, 3), np.uint8)
    pal[:, 0] = np.arange(256)
    for i in range(min(n, pool)):
        k = int(rng.integers(1, kmax + 1))
        classes = np.sort(rng.choice(np.arange(1, C), size=k, replace=False))
        mask = np.zeros((h, w), np.uint8)
        for c in classes:
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            yy, xx = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 6, w // 2))
            mask[y:y + yy, x:x + xx] = 255
            mask[y + 2:y + yy - 2, x + 2:x + xx - 2] = c
        hr = _smooth(rng, k, h, w)
        iid = f"img_{i:06d}"
        keys = classes - 1
        if tensors:  # exactly as IRN's make_cam.py writes them
            import torch

            d = {"keys": torch.from_numpy(keys), "cam": torch.from_numpy(hr[:, ::4, ::4].copy()), "high_res": hr}
        else:
            d = {"keys": keys, "high_res": hr}
        np.save(root / "cams" / f"{iid}.npy", d)
        for sub, arr in (("gt", mask), ("pred", np.where(rng.random((h, w)) < 0.1, rng.integers(0, C), mask)
                                        .astype(np.uint8))):
            im = Image.fromarray(np.where(arr == 255, 255 if sub == "gt" else 0, arr).astype(np.uint8), mode="P")
            im.putpalette(pal.reshape(-1).tolist())
            im.save(root / sub / f"{iid}.png")
    for i in range(pool, n):
        src = f"img_{i % pool:06d}"
        for sub, sfx in (("cams", ".npy"), ("gt", ".png"), ("pred", ".png")):
            os.link(root / sub / f"{src}{sfx}", root / sub / f"img_{i:06d}{sfx}")
    marker.write_text(json.dumps(spec))


# ----------------------------------------------------------------------------------------------
# the yardsticks, each run as its own process (--child ...)
# ----------------------------------------------------------------------------------------------


def _ids(gt: Path, limit: int | None) -> list[str]:
    ids = sorted(p.stem for p in gt.glob("*.png"))
    return ids[:limit] if limit else ids


def _read_label(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im, dtype=np.int32)


def chainercv_confusion(pred_labels, gt_labels):
    n_class = 0
    confusion = np.zeros((n_class, n_class), dtype=np.int64)
    for pred_label, gt_label in zip(pred_labels, gt_labels, strict=True):
        pred_label = pred_label.flatten()
        gt_label = gt_label.flatten()
        lb_max = np.max((pred_label, gt_label))
        if lb_max >= n_class:
            expanded = np.zeros((lb_max + 1, lb_max + 1), dtype=np.int64)
            expanded[0:n_class, 0:n_class] = confusion
            n_class = lb_max + 1
            confusion = expanded
        mask = gt_label >= 0
        confusion += np.bincount(n_class * gt_label[mask].astype(int) + pred_label[mask],
                                 minlength=n_class ** 2).reshape((n_class, n_class))
    return confusion


def child_irn(cams: Path, gt: Path, thresholds: int, limit: int | None) -> float:
    """IRN step/eval_cam.py (re-implemented from reading it), at ``thresholds`` thresholds."""
    ids = _ids(gt, limit)
    labels = []
    for i in ids:  # chainercv's VOCSemanticSegmentationDataset: int32 label, 255 -> -1
        lab = _read_label(gt / f"{i}.png")
        lab[lab == 255] = -1
        labels.append(lab)
    ts = [0.15] if thresholds == 1 else [j / thresholds for j in range(thresholds)]
    out = 0.0
    for t in ts:
        preds = []
        for i in ids:
            cam_dict = np.load(cams / f"{i}.npy", allow_pickle=True).item()
            c = cam_dict["high_res"]
            c = np.pad(c, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
            keys = np.pad(np.asarray(cam_dict["keys"]) + 1, (1, 0), mode="constant")
            cls_labels = np.argmax(c, axis=0)
            cls_labels = keys[cls_labels]
            preds.append(cls_labels.copy())
        confusion = chainercv_confusion(preds, labels)
        gtj, resj, gtjresj = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = float(np.nanmean(gtjresj / (gtj + resj - gtjresj)))
    return out


def child_numpy_sweep(cams: Path, gt: Path, C: int, T: int = 100) -> float:
    """A plain numpy one-histogram sweep: argmax, searchsorted into the thresholds, one bincount."""
    from PIL import Image

    thr = (np.arange(T) / T).astype(np.float32)
    H = np.zeros(C * C * (T + 1), np.int64)
    for i in _ids(gt, None):
        d = np.load(cams / f"{i}.npy", allow_pickle=True).item()
        s, keys = d["high_res"], np.asarray(d["keys"]) + 1
        with Image.open(gt / f"{i}.png") as im:
            g = np.asarray(im)
        m = s.max(axis=0)
        k = keys[s.argmax(axis=0)]
        b = np.searchsorted(thr, m, side="left")  # thresholds strictly below m
        valid = g != 255
        idx = (g[valid].astype(np.int64) * C + k[valid]) * (T + 1) + b[valid]
        H += np.bincount(idx, minlength=C * C * (T + 1))
    H = H.reshape(C, C, T + 1)
    rev = np.cumsum(H[..., ::-1], axis=-1)[..., ::-1]
    conf = np.moveaxis(rev[..., 1:], -1, 0).copy()
    conf[:, :, 0] = H.sum(-1).sum(-1)[None] - conf[:, :, 1:].sum(-1)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (conf.sum(1) + conf.sum(2) - tp)
    return float(np.nanmax(np.nanmean(iou, axis=1)))


def child_io(cams: Path, gt: Path) -> float:
    """The I/O floor: read every map file and mask, nothing else."""
    from PIL import Image

    total = 0
    for i in _ids(gt, None):
        d = np.load(cams / f"{i}.npy", allow_pickle=True).item()
        with Image.open(gt / f"{i}.png") as im:
            g = np.asarray(im)
        total += d["high_res"].shape[0] + g.shape[0]
    return float(total)


def child_bincount(pred: Path, gt: Path, C: int) -> float:
    """Hard masks: a numpy bincount loop (chainercv/mmseg style)."""
    from PIL import Image

    conf = np.zeros(C * C, np.int64)
    for i in _ids(gt, None):
        with Image.open(pred / f"{i}.png") as im:
            p = np.asarray(im)
        with Image.open(gt / f"{i}.png") as im:
            g = np.asarray(im)
        valid = g != 255
        conf += np.bincount(C * g[valid].astype(int) + p[valid], minlength=C * C)
    c = conf.reshape(C, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(np.diag(c) / (c.sum(0) + c.sum(1) - np.diag(c))))


def child_ours(kind: str, src: Path, gt: Path, classes: str, workers: int | None) -> float:
    """wsss-bench's evaluation functions in-process (no CLI, no record written)."""
    from wsss_bench.data.classes import get_classset
    from wsss_bench.evaluate import GroundTruth, eval_cams, eval_predictions

    truth = GroundTruth.from_folder(gt, get_classset(classes))
    if kind == "cams":
        rec, _ = eval_cams(src, truth, workers=workers, native=0.15)
        return float(rec["metrics"]["miou"])
    rec, _ = eval_predictions(src, truth, workers=workers)
    return float(rec["metrics"]["miou"])


def run_child(a: argparse.Namespace) -> None:
    """Run one yardstick; print its time after imports ("in-process") as a JSON line."""
    import PIL.Image  # noqa: F401 - imports before the clock starts

    if a.child.startswith("ours"):
        import wsss_bench.data.classes  # noqa: F401
        import wsss_bench.evaluate  # noqa: F401
        import wsss_bench.records

        wsss_bench.records.environment()  # whatever the record's environment imports, before the clock
    t0 = time.perf_counter()
    src, gt = Path(a.child_args[0]), Path(a.child_args[1])
    if a.child == "irn":
        v = child_irn(src, gt, a.child_thresholds, a.child_limit)
    elif a.child == "numpy":
        v = child_numpy_sweep(src, gt, a.child_classes)
    elif a.child == "io":
        v = child_io(src, gt)
    elif a.child == "bincount":
        v = child_bincount(src, gt, a.child_classes)
    else:  # ours-cams / ours-pred
        v = child_ours(a.child.split("-")[1], src, gt, "voc" if a.child_classes == 21 else "coco", a.child_workers)
    print(json.dumps({"inner_s": time.perf_counter() - t0, "value": v}))


# ----------------------------------------------------------------------------------------------
# timing harness
# ----------------------------------------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system, the process and the workers it waited for) and
    the child's own JSON line, if any."""
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-2000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res = {"wall": wall, "cpu": cpu, "load": load}
    for line in out.decode().splitlines()[::-1]:
        if line.startswith("{"):
            res.update(json.loads(line))
            break
    return res


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait()


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of the largest process of ``cmd`` (GNU time -f %M), MiB."""
    if not shutil.which("time") and not Path("/usr/bin/time").exists():
        return float("nan")
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, env=env, text=True)
    return float(r.stderr.strip().splitlines()[-1]) / 1024 if r.returncode == 0 else float("nan")


def loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="200,1464", help="VOC-sized split sizes (comma-separated)")
    ap.add_argument("--coco-images", default="", help="COCO-sized split sizes, e.g. 500,2000")
    ap.add_argument("--pool", type=int, default=300, help="distinct images generated per dataset")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load", default="quiet,busy", help="quiet, busy or both (comma-separated)")
    ap.add_argument("--irn100-images", type=int, default=40, help="images IRN's 100-threshold loop is timed on")
    ap.add_argument("--tensors", action="store_true", help="maps written exactly as make_cam.py (torch tensors)")
    ap.add_argument("--scan-workers", action="store_true", help="time --workers 0..cores+1 only")
    ap.add_argument("--workers", type=int, default=None, help="--workers for wsss-bench eval (default: its own)")
    ap.add_argument("--data", default=None, help="folder for generated data (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-thresholds", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--child-limit", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-classes", type=int, default=21, help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        run_child(a)
        return

    data = Path(a.data or tempfile.mkdtemp(prefix="bench-sweep-"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    py = sys.executable
    me = [py, str(HERE)]
    cores = len(os.sched_getaffinity(0))
    print(f"# {cores} cores available; python {sys.version.split()[0]}; numpy {np.__version__}; data in {data}")
    outdir = Path(tempfile.mkdtemp(prefix="bench-out-"))
    sets = [("voc", int(n), 21, 375, 500, 3) for n in a.images.split(",") if n] + \
           [("coco", int(n), 81, 480, 640, 10) for n in a.coco_images.split(",") if n]
    for name, n, C, h, w, kmax in sets:
        root = data / f"{name}{'-t' if a.tensors else ''}-{n}"
        t = time.perf_counter()
        generate(root, n, a.pool, C, h, w, kmax, seed=0, tensors=a.tensors)
        print(f"\n## {name}: {n} images {h}x{w}, {C} classes, 1-{kmax} an image "
              f"(generated in {time.perf_counter() - t:.0f} s)")
        cams, gt, pred = root / "cams", root / "gt", root / "pred"
        classes = "voc" if C == 21 else "coco"
        wflag = [] if a.workers is None else ["--workers", str(a.workers)]
        ours = [py, "-m", "wsss_bench", "eval", "--cams", str(cams), "--gt", str(gt), "--classes", classes,
                "--native", "0.15", "--out", str(outdir / "o"), *wflag]
        if a.scan_workers:
            cmds = {f"eval --workers {k}": ours + ["--workers", str(k)] for k in range(cores + 2)}
        else:
            cmds = {
                "wsss-bench eval --cams": ours,
                "  (start-up only: wsss-bench eval --help)": [py, "-m", "wsss_bench", "eval", "--help"],
                "  (in-process eval_cams)": me + ["--child", "ours-cams", "--child-classes", str(C),
                                                  *(["--child-workers", str(a.workers)] if a.workers is not None
                                                    else []), str(cams), str(gt)],
                "IRN eval_cam, 1 threshold": me + ["--child", "irn", str(cams), str(gt)],
                f"IRN eval_cam x100 (first {min(n, a.irn100_images)})": me + [
                    "--child", "irn", "--child-thresholds", "100", "--child-limit", str(a.irn100_images),
                    str(cams), str(gt)],
                "numpy one-histogram sweep": me + ["--child", "numpy", "--child-classes", str(C), str(cams), str(gt)],
                "I/O floor (read maps+masks)": me + ["--child", "io", str(cams), str(gt)],
                "wsss-bench eval --pred": [py, "-m", "wsss_bench", "eval", "--pred", str(pred), "--gt", str(gt),
                                           "--classes", classes, "--out", str(outdir / "p"), *wflag],
                "  (in-process eval_predictions)": me + ["--child", "ours-pred", "--child-classes", str(C),
                                                         str(pred), str(gt)],
                "numpy bincount loop (masks)": me + ["--child", "bincount", "--child-classes", str(C),
                                                     str(pred), str(gt)],
            }
        for load in a.load.split(","):
            hogs = busy(2) if load == "busy" else []
            try:
                time.sleep(0.5)
                before = loadavg()
                names = list(cmds)
                res: dict[str, list[dict[str, float]]] = {k: [] for k in names}
                for r in range(a.rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for k in order:
                        res[k].append(timed(cmds[k], env))
                after = loadavg()
            finally:
                stop(hogs)
            med = {k: statistics.median(x["wall"] for x in v) for k, v in res.items()}
            cpu = {k: statistics.median(x["cpu"] for x in v) for k, v in res.items()}
            inner = {k: statistics.median(x.get("inner_s", float("nan")) for x in v) for k, v in res.items()}
            print(f"\n### {load} ({'two CPU-bound processes beside each command, ' if hogs else ''}"
                  f"load average {before} -> {after}), median of {a.rounds} rounds")
            print(f"{'command':44s} {'wall s':>8s} {'min':>7s} {'max':>7s} {'cpu s':>7s} {'in-proc s':>10s} "
                  f"{'load':>5s}")
            for k in names:
                walls = [x["wall"] for x in res[k]]
                lo = statistics.median(x["load"] for x in res[k])
                print(f"{k:44s} {med[k]:8.2f} {min(walls):7.2f} {max(walls):7.2f} {cpu[k]:7.2f} {inner[k]:10.2f} "
                      f"{lo:5.1f}")
            if a.scan_workers:
                continue
            irn100_key = next(k for k in names if k.startswith("IRN eval_cam x100"))
            irn100 = med[irn100_key] * n / min(n, a.irn100_images)
            e = med["wsss-bench eval --cams"]
            ei = inner["  (in-process eval_cams)"]
            print(f"IRN x100 scaled to {n} images: {irn100:.1f} s")
            ec = cpu["wsss-bench eval --cams"]
            print(f"cpu-time ratios (what the wall ratios tend to on a saturated machine): IRN one "
                  f"{ec / cpu['IRN eval_cam, 1 threshold']:.2f}, numpy {ec / cpu['numpy one-histogram sweep']:.2f}, "
                  f"I/O {ec / cpu['I/O floor (read maps+masks)']:.2f}, masks "
                  f"{cpu['wsss-bench eval --pred'] / cpu['numpy bincount loop (masks)']:.2f}")
            print(f"ratio eval / IRN one threshold:    {e / med['IRN eval_cam, 1 threshold']:6.2f}  (goal <= 1.5)")
            print(f"ratio IRN x100 / eval:             {irn100 / e:6.1f}  (goal >= 30)")
            print(f"ratio eval / numpy one-histogram:  {e / med['numpy one-histogram sweep']:6.2f}  (goal <= 1.5)")
            print(f"ratio eval / I/O floor:            {e / med['I/O floor (read maps+masks)']:6.2f}  (goal <= 3)")
            print(f"  same ratios in-process (after imports): IRN {ei / inner['IRN eval_cam, 1 threshold']:.2f}, "
                  f"numpy {ei / inner['numpy one-histogram sweep']:.2f}, "
                  f"I/O {ei / inner['I/O floor (read maps+masks)']:.2f}")
            print(f"ratio eval --pred / bincount loop: {med['wsss-bench eval --pred'] / med['numpy bincount loop (masks)']:6.2f}"
                  f"  (goal <= 1.2; in-process "
                  f"{inner['  (in-process eval_predictions)'] / inner['numpy bincount loop (masks)']:.2f})")
        if not a.scan_workers:
            print(f"peak RSS of wsss-bench eval --cams ({n} images): {peak_rss_mib(ours, env):.0f} MiB (largest process)")
    shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
