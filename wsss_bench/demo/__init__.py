"""The embedded demo: ``wsss-bench run`` with no arguments.

Generates the synthetic set (cached, deterministic), runs every built-in method with its shipped
demo weights at native and standard settings plus the weightless centre prior, writes the records
and the leaderboard (Markdown, HTML, plots) and prints the summary table.

With ``--with-segmenter`` (:func:`run_demo` ``with_segmenter=True``) it also runs the final stage:
each method's native run (and the centre prior's) writes its pseudo labels at its **calibrated**
threshold (chosen on the protocol's calibration subset, never on the images it is scored on; the
best threshold when that subset is empty), the ``tiny-synthetic`` recipe trains a segmenter on
them (:func:`wsss_bench.training.train_demo_segmenter`'s recipe), and its ``val`` record joins the
others, so the leaderboard's pipeline table shows pseudo-label mIoU beside final mIoU. The
trainings run in the same pool of one-thread processes as the runs, each after its pseudo labels.
On 2 cores shared with other work (load 2-5) the demo took 144 s wall for 145 s of CPU (so about
75 s on two free cores, an estimate), and 277 s for 314 s of CPU with the segmenters (over 120 s
even on free cores): the trainings stay behind the flag.
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


def pseudo_threshold_rule(data_root: Path, split: str = "train") -> str:
    """``calibrated`` when the split has images in the protocol's calibration subset (and others to
    score), else ``best``: the threshold the demo's pseudo labels are made at."""
    from wsss_bench.data import build_dataset
    from wsss_bench.metrics.functional import is_calibration_id

    ids = build_dataset("synthetic", data_root, split).ids
    n_cal = sum(map(is_calibration_id, ids))
    return "calibrated" if 0 < n_cal < len(ids) else "best"


def demo_runs(data_root: Path, out: Path, device: str = "auto", workers: int = 0,
              methods: list[str] | None = None, settings: tuple[str, ...] = ("native", "standard"),
              with_segmenter: bool = False) -> list[Any]:
    """RunConfigs of the demo suite. ``with_segmenter``: the native runs and the centre prior also
    write pseudo labels (``out/pseudo/<run>``) at the calibrated threshold, for :func:`demo_trainings`."""
    from wsss_bench.data.classes import SYNTHETIC
    from wsss_bench.errors import WsssBenchError
    from wsss_bench.inference import RunConfig, resolve_settings
    from wsss_bench.methods.registry import load_method

    manifest = demo_manifest()
    rule = pseudo_threshold_rule(data_root) if with_segmenter else "best"

    def pseudo(cfg: Any) -> Any:
        if not with_segmenter or cfg.settings != "native":
            return cfg
        return dataclasses.replace(cfg, save_pseudo=str(out / "pseudo" / cfg.name), threshold=rule)

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
            runs.append(pseudo(cfg))
    prior = pseudo(RunConfig(method="center-prior", dataset="synthetic", data_root=str(data_root),
                             split="train", settings="native", device=device, workers=workers,
                             out=str(out / "records"), name="center-prior"))
    if prior.save_pseudo:  # its pseudo labels are read back from a map cache: keep it with the others
        prior = dataclasses.replace(prior, save_cams=str(out / "maps" / "center-prior"), fresh=True)
    runs.append(prior)
    return runs


def demo_trainings(runs: list[Any], out: Path, device: str = "auto", iterations: int | None = None
                   ) -> dict[str, Any]:
    """``{run name: TrainConfig}``: the tiny segmenter on each run's pseudo labels (the runs that
    write them), trained in ``out/segmenters/<run>``, its record in ``out/records``. Always trained
    afresh, as the runs' map caches are. ``iterations`` overrides the recipe's (tests; recorded)."""
    from wsss_bench.training import DEMO_RECIPE, TrainConfig

    return {cfg.name: TrainConfig(
        pseudo_dir=cfg.save_pseudo, data_root=cfg.data_root, out=str(out / "segmenters" / cfg.name),
        dataset="synthetic", split=cfg.split, val_split="val", recipe=DEMO_RECIPE, seed=0, device=device,
        workers=0, fresh=True, record_dir=cfg.out, iterations=iterations) for cfg in runs if cfg.save_pseudo}


#: Rough seconds per image and view of a demo run, and per iteration of the tiny recipe, on one thread
#: of this project's 2-core machine (measured; only the ratio matters: it orders the work).
SECONDS_PER_VIEW = 0.004
SECONDS_PER_ITERATION = 0.075


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


def train_units(train: Any) -> tuple[int, int]:
    """(progress units of a training: its iterations times the batch, then its val images; the batch)."""
    from wsss_bench.data import build_dataset
    from wsss_bench.training.loop import resolve_recipe

    recipe = resolve_recipe(train)
    val = len(build_dataset(train.dataset, train.data_root, train.val_split, **train.dataset_options).ids)
    return recipe.iterations * recipe.batch + val, recipe.batch


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


def _train_one(key: str, train: Any, batch: int, threads: int, queue: Any) -> dict[str, Any] | tuple[str, str | None]:
    """Worker process: one segmenter training with ``threads`` torch threads; its progress (crops
    seen) goes to ``queue`` under ``key``."""
    import torch

    from wsss_bench.errors import WsssBenchError
    from wsss_bench.training import train_segmenter

    torch.set_num_threads(threads)
    try:
        res = train_segmenter(train, progress=lambda done, total, _loss, _lr: queue.put((key, done * batch, None)))
        return res.record
    except WsssBenchError as e:
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


TRAIN_PREFIX = "train:"


def execute_runs(runs: list[Any], jobs: int, trainings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``runs`` (and ``trainings``, ``{run name: TrainConfig}``, each after its run) and return
    their records in order: the runs', then the trainings'.

    With ``jobs`` > 1 the work goes to that many worker processes with one torch thread each: the
    demo's networks are too small for several threads to help one job, so running several at once
    uses the cores better. A run that reads another run's map cache starts after it, a training
    after its run; among the jobs ready to start, the one heading the longest chain of remaining
    work starts first (:func:`run_cost`, :data:`SECONDS_PER_ITERATION`), which shortens the wall
    time. The progress bar counts images scored and training crops seen (plus each training's
    ``val`` images), against a total known before anything starts.
    """
    from wsss_bench.commands._ui import progress_bar
    from wsss_bench.errors import WsssBenchError
    from wsss_bench.inference import run_method

    trainings = dict(trainings or {})
    unknown = [k for k in trainings if k not in {cfg.name for cfg in runs}]
    if unknown:
        raise WsssBenchError(f"training of unknown demo run {unknown[0]!r}")
    sizes = {cfg.name: run_images(cfg) for cfg in runs}
    units = {f"{TRAIN_PREFIX}{k}": train_units(t) for k, t in trainings.items()}
    sizes.update({k: u[0] for k, u in units.items()})
    total = sum(sizes.values())
    label = f"demo: {len(runs)} runs" + (f", {len(trainings)} segmenters" if trainings else "") + \
        (f", {jobs} at a time" if jobs > 1 else "")
    order = [cfg.name for cfg in runs] + [f"{TRAIN_PREFIX}{k}" for k in trainings]
    if jobs <= 1:
        from wsss_bench.training import train_segmenter

        records: dict[str, dict[str, Any]] = {}
        with progress_bar(label, total) as update:
            offset = 0
            for cfg in runs:
                records[cfg.name] = run_method(cfg, progress=lambda done, _t, o=offset: update(o + done)).record
                offset += sizes[cfg.name]
            for k, train in trainings.items():
                key, batch = f"{TRAIN_PREFIX}{k}", units[f"{TRAIN_PREFIX}{k}"][1]
                records[key] = train_segmenter(
                    train, progress=lambda done, _t, _l, _r, o=offset, b=batch: update(o + done * b)).record
                offset += sizes[key]
                update(offset)
        return [records[k] for k in order]

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    writers = {cfg.save_cams: cfg.name for cfg in runs if cfg.save_cams and cfg.fresh}
    after = {cfg.name: writers[cfg.save_cams] for cfg in runs
             if cfg.save_cams and not cfg.fresh and cfg.save_cams in writers}
    after.update({f"{TRAIN_PREFIX}{k}": k for k in trainings})
    # seconds of work of each job, and of the longest chain of jobs it heads (its priority)
    own = {cfg.name: run_cost(cfg) * sizes[cfg.name] * SECONDS_PER_VIEW for cfg in runs}
    own.update({k: u[0] / u[1] * SECONDS_PER_ITERATION for k, u in units.items()})
    chain = dict(own)
    for job in reversed(order):  # a job's dependants come after it in ``order``
        if job in after:
            chain[after[job]] = max(chain[after[job]], own[after[job]] + chain[job])
    ctx = mp.get_context("spawn")  # no fork after torch has started its thread pools
    results: dict[str, dict[str, Any]] = {}
    done_units: dict[str, int] = {}
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool, \
            progress_bar(label, total) as update:
        q = manager.Queue()
        # the jobs are the parallelism: no DataLoader worker processes inside them
        pending: dict[str, Any] = {cfg.name: dataclasses.replace(cfg, workers=0) for cfg in runs}
        pending.update({f"{TRAIN_PREFIX}{k}": dataclasses.replace(t, workers=0) for k, t in trainings.items()})
        running: dict[Any, str] = {}

        def submit_ready() -> None:
            ready = sorted((n for n in pending if after.get(n) is None or after[n] in results),
                           key=lambda n: (-chain[n], order.index(n)))
            for name in ready[: max(0, jobs - len(running))]:
                job = pending.pop(name)
                if name.startswith(TRAIN_PREFIX):
                    fut = pool.submit(_train_one, name, job, units[name][1], 1, q)
                else:
                    fut = pool.submit(_run_one, job, 1, q)
                running[fut] = name

        def drain() -> None:
            while True:
                try:
                    name, d, _t = q.get_nowait()
                except queue_mod.Empty:
                    break
                done_units[name] = d
            # the bar counts over every job, against the total of all jobs known up front
            if done_units:
                update(sum(done_units.values()))

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
                results[name] = result
                done_units[name] = sizes[name]
            if finished:
                update(sum(done_units.values()))
            submit_ready()
    return [results[k] for k in order]


def pipeline_table(records: list[dict[str, Any]]) -> Any:
    """A rich table of the demo's trained segmenters: each method's pseudo labels (threshold, mIoU of
    the PNGs on train) beside the final mIoU of the segmenter trained on them (val)."""
    from rich.table import Table

    from wsss_bench.commands._ui import pct

    t = Table(title="wsss-bench demo: pseudo labels -> tiny segmenter (mIoU %)", header_style="bold",
              caption="pseudo labels: the PNGs scored on train; final: the segmenter trained on them, on val",
              caption_justify="left")
    for col, just in (("pseudo labels of", "left"), ("threshold", "right"), ("pseudo labels", "right"),
                      ("final", "right"), ("training s", "right")):
        t.add_column(col, justify=just, no_wrap=col != "pseudo labels of")
    rows = [r for r in records if r.get("kind") == "segmentation" and isinstance(r.get("pipeline"), dict)]
    for r in sorted(rows, key=lambda r: -(r["metrics"]["miou"] or 0)):
        pl = r["pipeline"]
        thr = "-" if pl.get("threshold") is None else f"{pl['threshold']:.2f} ({pl.get('threshold_rule')})"
        t.add_row(str(pl.get("pseudo_record") or "-"), thr, pct(pl.get("pseudo_labels_miou")),
                  pct(r["metrics"]["miou"]), f"{(r.get('training') or {}).get('seconds', 0):.0f}")
    return t


def run_demo(out: Path = Path("wsss-bench-demo"), images: int | None = None, device: str = "auto",
             workers: int = 0, methods: list[str] | None = None, quiet: bool = False,
             jobs: int | None = None, with_segmenter: bool = False,
             segmenter_iterations: int | None = None) -> list[dict[str, Any]]:
    """Run the demo suite; returns the records (the runs', then, with ``with_segmenter``, the trained
    segmenters'). ``jobs``: parallel jobs (default :func:`default_jobs`); ``segmenter_iterations``
    overrides the tiny recipe's iterations (for tests; the records say so)."""
    from wsss_bench.commands._ui import console, summary_table
    from wsss_bench.data.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    out = Path(out)
    n = images or DEMO_SET["num_images"]
    data = ensure_synthetic(out / "data" / f"shapes-{n}-seed{DEMO_SET['seed']}", n, DEMO_SET["seed"],
                            DEMO_SET["size"])
    runs = demo_runs(data, out, device=device, workers=workers, methods=methods, with_segmenter=with_segmenter)
    trainings = demo_trainings(runs, out, device=device, iterations=segmenter_iterations) if with_segmenter else {}
    records = execute_runs(runs, default_jobs(device) if jobs is None else int(jobs), trainings)
    files: list[Path] = []
    try:
        from wsss_bench.reports import build_leaderboard
    except ImportError:  # pragma: no cover - reports are part of the package
        build_leaderboard = None
    if build_leaderboard is not None:
        command = f"wsss-bench run --out {out}" + (" --with-segmenter" if with_segmenter else "")
        files = build_leaderboard([out / "records"], out, formats=("md", "html", "csv", "json"),
                                  title="wsss-bench demo (synthetic shapes)", command=command)
    if not quiet:
        console.print(summary_table(records))
        if trainings:
            console.print(pipeline_table(records))
        what = f"{len(runs)} runs" + (f" and {len(trainings)} segmenters" if trainings else "")
        console.print(f"{what} in {time.perf_counter() - t0:.1f} s; records in {out / 'records'}")
        for f in files:
            if f.suffix in (".md", ".html"):
                console.print(f"leaderboard: {f}")
    return records
