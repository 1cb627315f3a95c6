"""The embedded demo: ``wsss-bench run`` with no arguments.

Generates the synthetic set (cached, deterministic), runs every built-in method with its shipped
demo weights at native and standard settings plus the weightless centre prior, writes the records
and the leaderboard (Markdown, HTML, plots) and prints the summary table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from wsss_bench.demo.train import DEMO_MODELS

DEMO_SET = {"num_images": 160, "seed": 0, "size": (96, 128)}
WEIGHTS_PACKAGE = "wsss_bench.demo"


def weights_dir() -> Path:
    return Path(str(resources.files(WEIGHTS_PACKAGE))) / "weights"


def demo_manifest() -> dict[str, Any]:
    p = weights_dir() / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def demo_runs(data_root: Path, out: Path, device: str = "auto", workers: int = 0,
              methods: list[str] | None = None, settings: tuple[str, ...] = ("native", "standard")) -> list[Any]:
    """RunConfigs of the demo suite."""
    from wsss_bench.data.classes import SYNTHETIC
    from wsss_bench.errors import WsssBenchError
    from wsss_bench.inference import RunConfig, resolve_settings
    from wsss_bench.methods.registry import load_method

    manifest = demo_manifest()
    runs = []
    for name in methods or list(DEMO_MODELS):
        if name not in manifest:
            raise WsssBenchError(f"no shipped demo weights for {name!r}; run `wsss-bench demo train`",
                                 weights_dir())
        entry = manifest[name]
        adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=entry["backbone"])
        maps_of: dict[Any, str] = {}  # resolved settings -> the map cache of the first run using them
        for s in settings:
            cfg = RunConfig(method=name, backbone=entry["backbone"], checkpoint=str(weights_dir() / entry["file"]),
                            dataset="synthetic", data_root=str(data_root), split="train", settings=s,
                            device=device, workers=workers, out=str(out / "records"), name=f"{name}-{s}")
            # where a method's standard settings are its native ones (CAM, AD-CAM), the second run
            # reads the first run's maps from the map cache instead of computing them again; the
            # first run always starts a fresh cache, so maps from older demo weights are never read
            key = resolve_settings(adapter, cfg)
            if key in maps_of:
                cfg = dataclasses.replace(cfg, save_cams=maps_of[key])
            else:
                maps_of[key] = str(out / "maps" / f"{name}-{s}")
                cfg = dataclasses.replace(cfg, save_cams=maps_of[key], fresh=True)
            runs.append(cfg)
    runs.append(RunConfig(method="center-prior", dataset="synthetic", data_root=str(data_root), split="train",
                          settings="native", device=device, workers=workers, out=str(out / "records"),
                          name="center-prior"))
    return runs


def run_cost(cfg: Any) -> float:
    """Rough relative cost of a demo run, so that parallel execution starts the longest first: views
    per image, times 3 where every class needs its own backward pass (GETAM); 0 for a run that reads
    another run's map cache."""
    from wsss_bench.data.classes import SYNTHETIC
    from wsss_bench.inference import resolve_settings
    from wsss_bench.methods.registry import load_method

    if cfg.save_cams and not cfg.fresh:
        return 0.0
    adapter = load_method(cfg.method)(SYNTHETIC.num_foreground, backbone=cfg.backbone, hparams=cfg.hparams)
    s = resolve_settings(adapter, cfg)
    return len(s.scales) * (2 if s.flip else 1) * (3 if adapter.needs_grad else 1)


def _run_one(cfg: Any, threads: int, queue: Any) -> dict[str, Any] | tuple[str, str | None]:
    """Worker process: one demo run with ``threads`` torch threads; progress goes to ``queue``."""
    import torch

    from wsss_bench.errors import WsssBenchError
    from wsss_bench.inference import run_method

    torch.set_num_threads(threads)
    try:
        return run_method(cfg, progress=lambda done, total: queue.put((cfg.name, done, total))).record
    except WsssBenchError as e:  # sent back as plain values (the exception's signature does not pickle)
        return (e.message, e.path)


def default_jobs(device: str) -> int:
    """Parallel demo runs: one per CPU core (at most 4) on the CPU, one on an accelerator."""
    import os

    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def run_images(cfg: Any) -> int:
    """Images a run will score (its split, cut by ``limit``): known before it starts, so that the
    demo's progress has its whole total from the start."""
    from wsss_bench.data import build_dataset

    n = len(build_dataset(cfg.dataset, cfg.data_root, cfg.split, **cfg.dataset_options).ids)
    return min(n, cfg.limit) if cfg.limit else n


def execute_runs(runs: list[Any], jobs: int) -> list[dict[str, Any]]:
    """Run ``runs`` and return their records in order.

    With ``jobs`` > 1 the runs go to that many worker processes with one torch thread each: the
    demo's networks are too small for several threads to help one run, so running several runs at
    once uses the cores better. A run that reads another run's map cache starts after it; the
    others start longest first (:func:`run_cost`), which shortens the wall time.
    """
    from wsss_bench.commands._ui import progress_bar
    from wsss_bench.errors import WsssBenchError
    from wsss_bench.inference import run_method

    sizes = {cfg.name: run_images(cfg) for cfg in runs}
    total = sum(sizes.values())
    label = f"demo: {len(runs)} runs" + (f", {jobs} at a time" if jobs > 1 else "")
    if jobs <= 1:
        records = []
        with progress_bar(label, total) as update:
            offset = 0
            for cfg in runs:
                records.append(run_method(cfg, progress=lambda done, _t, o=offset: update(o + done)).record)
                offset += sizes[cfg.name]
        return records

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    writers = {cfg.save_cams: cfg.name for cfg in runs if cfg.save_cams and cfg.fresh}
    after = {cfg.name: writers[cfg.save_cams] for cfg in runs
             if cfg.save_cams and not cfg.fresh and cfg.save_cams in writers}
    ctx = mp.get_context("spawn")  # no fork after torch has started its thread pools
    records: dict[str, dict[str, Any]] = {}
    done_images: dict[str, int] = {}
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool, \
            progress_bar(label, total) as update:
        q = manager.Queue()
        # the runs are the parallelism: no DataLoader worker processes inside them
        pending = {cfg.name: dataclasses.replace(cfg, workers=0) for cfg in runs}
        cost = {cfg.name: run_cost(cfg) for cfg in runs}
        running: dict[Any, str] = {}

        def submit_ready() -> None:
            for name in sorted(pending, key=lambda n: -cost[n]):
                if after.get(name) is None or after[name] in records:
                    running[pool.submit(_run_one, pending.pop(name), 1, q)] = name

        def drain() -> None:
            while True:
                try:
                    name, d, _t = q.get_nowait()
                except queue_mod.Empty:
                    break
                done_images[name] = d
            # the bar counts images over every run, against the total of all runs known up front
            if done_images:
                update(sum(done_images.values()))

        submit_ready()
        while running:
            finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in finished:
                name = running.pop(fut)
                result = fut.result()
                if isinstance(result, tuple):
                    for other in running:
                        other.cancel()
                    raise WsssBenchError(*result)
                records[name] = result
            submit_ready()
    return [records[cfg.name] for cfg in runs]


def run_demo(out: Path = Path("wsss-bench-demo"), images: int | None = None, device: str = "auto",
             workers: int = 0, methods: list[str] | None = None, quiet: bool = False,
             jobs: int | None = None) -> list[dict[str, Any]]:
    """Run the demo suite; returns the records. ``jobs``: parallel runs (default :func:`default_jobs`)."""
    from wsss_bench.commands._ui import console, summary_table
    from wsss_bench.data.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    out = Path(out)
    n = images or DEMO_SET["num_images"]
    data = ensure_synthetic(out / "data" / f"shapes-{n}-seed{DEMO_SET['seed']}", n, DEMO_SET["seed"],
                            DEMO_SET["size"])
    runs = demo_runs(data, out, device=device, workers=workers, methods=methods)
    records = execute_runs(runs, default_jobs(device) if jobs is None else int(jobs))
    files: list[Path] = []
    try:
        from wsss_bench.reports import build_leaderboard
    except ImportError:  # pragma: no cover - reports are part of the package
        build_leaderboard = None
    if build_leaderboard is not None:
        files = build_leaderboard([out / "records"], out, formats=("md", "html", "csv", "json"),
                                  title="wsss-bench demo (synthetic shapes)",
                                  command=f"wsss-bench run --out {out}")
    if not quiet:
        console.print(summary_table(records))
        console.print(f"{len(records)} runs in {time.perf_counter() - t0:.1f} s; records in {out / 'records'}")
        for f in files:
            if f.suffix in (".md", ".html"):
                console.print(f"leaderboard: {f}")
    return records
