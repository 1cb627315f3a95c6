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
    from wsss_bench.inference.runner import RunConfig, resolve_settings
    from wsss_bench.methods.registry import load_method

    manifest = demo_manifest()
    runs = []
    for name in methods or list(DEMO_MODELS):
        if name not in manifest:
            raise WsssBenchError(f"no shipped demo weights for {name!r}; run `wsss-bench demo train`",
                                 weights_dir())
        entry = manifest[name]
        adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=entry["backbone"])
        maps_of: dict[str, str] = {}  # resolved settings -> the map cache of the first run using them
        for s in settings:
            cfg = RunConfig(method=name, backbone=entry["backbone"], checkpoint=str(weights_dir() / entry["file"]),
                            dataset="synthetic", data_root=str(data_root), split="train", settings=s,
                            device=device, workers=workers, out=str(out / "records"), name=f"{name}-{s}")
            # where a method's standard settings are its native ones (CAM, AD-CAM), the second run
            # reads the first run's maps from the map cache instead of computing them again; the
            # first run always starts a fresh cache, so maps from older demo weights are never read
            key = json.dumps(resolve_settings(adapter, cfg).to_dict(), sort_keys=True)
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


def run_demo(out: Path = Path("wsss-bench-demo"), images: int | None = None, device: str = "auto",
             workers: int = 0, methods: list[str] | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the demo suite; returns the records."""
    from wsss_bench.commands._ui import console, progress_bar
    from wsss_bench.commands.run_cmd import summary_table
    from wsss_bench.data.synthetic import ensure_synthetic
    from wsss_bench.inference.runner import run_method

    t0 = time.perf_counter()
    out = Path(out)
    n = images or DEMO_SET["num_images"]
    data = ensure_synthetic(out / "data" / f"shapes-{n}-seed{DEMO_SET['seed']}", n, DEMO_SET["seed"],
                            DEMO_SET["size"])
    records = []
    runs = demo_runs(data, out, device=device, workers=workers, methods=methods)
    for cfg in runs:
        with progress_bar(f"demo: {cfg.name}") as update:
            res = run_method(cfg, progress=update)
        records.append(res.record)
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
