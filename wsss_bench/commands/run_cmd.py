"""``wsss-bench run`` (the main job) and ``wsss-bench methods``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from wsss_bench.commands._ui import console, progress_bar, summary_lines, summary_table
from wsss_bench.errors import WsssBenchError


def parse_floats(text: str | None, what: str, n: int | None = None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise WsssBenchError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or (n is not None and len(vals) != n):
        raise WsssBenchError(f"{what} needs {n or 'at least one'} comma-separated numbers, got {text!r}")
    return vals


def parse_hparams(items: list[str] | None, flag: str = "--hparam") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise WsssBenchError(f"{flag} must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = literal(v.strip())
    return out


def literal(text: str) -> Any:
    """A CLI value: int, float, true/false, a comma-separated list of those, or the string itself."""
    if "," in text:
        return [literal(t) for t in text.split(",") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def load_suite(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A TOML suite: top-level defaults (any run key) and ``[[run]]`` tables, one per method run."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WsssBenchError(f"cannot read suite file ({e.strerror})", path) from None
    except tomllib.TOMLDecodeError as e:
        raise WsssBenchError(f"invalid TOML ({e})", path) from None
    runs = data.pop("run", None)
    if not isinstance(runs, list) or not runs:
        raise WsssBenchError("suite file needs at least one [[run]] table", path)
    return data, runs


def run_command(
    config: Path = typer.Argument(None, help="A TOML suite file (defaults + [[run]] tables). "
                                  "With no config and no --method: the embedded demo."),
    method: str = typer.Option(None, "--method", "-m", help="Method adapter name (see `wsss-bench methods`)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="Checkpoint (.pth via weights_only, or .safetensors)."),
    backbone: str = typer.Option(None, "--backbone", help="Backbone variant of the method (default: the paper's)."),
    hparam: list[str] = typer.Option(None, "--hparam", help="Hyper-parameter override KEY=VALUE (repeatable)."),
    dataset: str = typer.Option("synthetic", "--dataset", help="voc, coco or synthetic."),
    data_root: Path = typer.Option(None, "--data-root", help="Dataset root folder."),
    split: str = typer.Option("train", "--split", help="Split to evaluate (VOC train is the protocol's)."),
    settings: str = typer.Option("native", "--settings", help="native (the method's own TTA) or standard (shared)."),
    scales: str = typer.Option(None, "--scales", help="Override scales, e.g. 1.0,0.5,1.5,2.0."),
    flip: bool = typer.Option(None, "--flip/--no-flip", help="Override flip test-time augmentation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (autocast; fp16 on CUDA only)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images of equal size per forward pass."),
    workers: int = typer.Option(2, "--workers", help="DataLoader worker processes for decoding."),
    out: Path = typer.Option(Path("wsss-bench-runs"), "--out", help="Folder for records."),
    name: str = typer.Option(None, "--name", help="Record name (default: <method>-<settings>)."),
    save_cams: Path = typer.Option(None, "--save-cams", help="Save maps as <id>.npz; doubles as a resumable cache."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore (and overwrite) an existing map cache."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Reuse cached maps (default with --save-cams)."),
    save_pseudo: Path = typer.Option(None, "--save-pseudo", help="Write VOC-palette PNG pseudo labels here."),
    threshold: str = typer.Option("best", "--threshold", help="Pseudo-label threshold: best, native, calibrated or a number."),
    ignore_band: str = typer.Option(None, "--ignore-band", help="LO,HI: pseudo label 255 where LO <= top score < HI."),
    thresholds: int = typer.Option(100, "--thresholds", help="Number of sweep thresholds T."),
    limit: int = typer.Option(None, "--limit", help="Only the first N images of the split (quick checks)."),
    demo_images: int = typer.Option(None, "--demo-images", help="Demo only: number of synthetic images."),
    jobs: int = typer.Option(None, "--jobs", help="Demo only: runs at a time, each in its own process "
                             "with one thread (default: one per CPU core, at most 4; 1 on a GPU)."),
    refine: str = typer.Option(None, "--refine", help="Also score a refined row (never the headline): crf, "
                               "saliency or crf+saliency (EDAM's rules; crf needs the [crf] extra)."),
    saliency: Path = typer.Option(None, "--saliency", help="Folder of saliency maps <id>.png for --refine saliency."),
    data_opt: list[str] = typer.Option(None, "--data-opt", help="Dataset option KEY=VALUE (repeatable): VOC "
                                       "labels=mask|xml; COCO crowd=ignore|background, masks=DIR, "
                                       "mask_ids=contiguous|coco, keep_empty=true, cache=DIR."),
    stage: str = typer.Option("pseudo", "--stage", help="pseudo (localisation maps -> pseudo labels) or "
                              "segmentation (a segmenter's final predictions)."),
    segmenter: str = typer.Option(None, "--segmenter", help="Segmenter name for --stage segmentation "
                                  "(deeplabv2, deeplabv3plus, more, getam)."),
    save_pred: Path = typer.Option(None, "--save-pred", help="Segmentation: write palette PNG predictions here "
                                   "(on VOC test: also the server archive)."),
) -> None:
    """Run methods' localisation-map inference over a split and score it under the protocol.

    With no arguments, runs the embedded demo (synthetic data, shipped demo weights, all methods).

    Examples:
      [bold]wsss-bench run[/bold]
      [bold]wsss-bench run --method cam --checkpoint res50_cam.pth --dataset voc --data-root VOC2012 --split train[/bold]
      [bold]wsss-bench run suite.toml --out records/[/bold]
    """
    from wsss_bench.inference import RunConfig, config_from_dict, run_method, run_segmentation_stage

    if stage not in ("pseudo", "segmentation"):
        raise WsssBenchError(f"--stage must be pseudo or segmentation, got {stage!r}")
    if config is None and method is None and segmenter is None:
        from wsss_bench.demo import run_demo

        run_demo(out=out if out != Path("wsss-bench-runs") else Path("wsss-bench-demo"), images=demo_images,
                 device=device, workers=workers, jobs=jobs)
        return
    cli = dict(dataset=dataset, data_root=None if data_root is None else str(data_root), split=split,
               settings=settings, scales=parse_floats(scales, "--scales"), flip=flip, device=device,
               precision=precision, batch_size=batch_size, workers=workers, out=str(out),
               save_cams=None if save_cams is None else str(save_cams), fresh=fresh or not resume,
               save_pseudo=None if save_pseudo is None else str(save_pseudo), threshold=threshold,
               ignore_band=parse_floats(ignore_band, "--ignore-band", 2), num_thresholds=thresholds, limit=limit,
               refine=refine, saliency_dir=None if saliency is None else str(saliency),
               dataset_options=parse_hparams(data_opt, "--data-opt"))
    if config is not None:
        defaults, runs = load_suite(config)
        cfgs = []
        for i, r in enumerate(runs, 1):
            merged = {**{k: v for k, v in cli.items() if k in ("device", "workers", "out")}, **defaults, **r}
            cfgs.append(config_from_dict(merged, where=f"{config} [[run]] #{i}"))
    else:
        if stage == "segmentation" and segmenter is None:
            raise WsssBenchError("--stage segmentation needs --segmenter NAME")
        cfgs = [RunConfig(method=method or "", checkpoint=None if checkpoint is None else str(checkpoint),
                          backbone=backbone, hparams=parse_hparams(hparam), name=name, stage=stage,
                          segmenter=segmenter, save_pred=None if save_pred is None else str(save_pred), **cli)]
    records = []
    for cfg in cfgs:
        with progress_bar(f"{cfg.run_name()}") as update:
            if cfg.stage == "segmentation":
                res = run_segmentation_stage(cfg, progress=update)
            else:
                res = run_method(cfg, progress=update)
        if res.record is not None and res.record.get("kind") == "export":
            console.print(f"[bold]{cfg.run_name()}[/bold]: {res.record['num_images']} predictions in "
                          f"{res.record['predictions']}; VOC server archive: {res.record.get('export')}")
        elif res.record is not None:
            records.append(res.record)
            for line in summary_lines(res.record):
                console.print(f"[bold]{res.record['name']}[/bold]: {line}")
            console.print(f"record: {res.record_path}")
    if len(records) > 1:
        console.print(summary_table(records))


def methods_command() -> None:
    """List installed method adapters (entry-point group wsss_bench.methods).

    Example: [bold]wsss-bench methods[/bold]
    """
    import warnings

    from wsss_bench.methods.registry import installed_methods

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = installed_methods()
    t = Table(title="installed methods", header_style="bold", show_lines=True)
    for col in ("name", "paper / official code", "backbones", "hyper-parameters", "native settings"):
        t.add_column(col)
    for name, cls in found.items():
        n = cls.native
        nat = (f"scales {', '.join(map(str, n.scales))} ({n.resize}); flip {'yes' if n.flip else 'no'} "
               f"({n.flip_fusion}); scales {n.scale_fusion}; {n.normalization} norm. at {n.fuse_at} size; "
               f"input {n.input_size or 'as is'}; background {n.background.rule} {n.background.value}")
        hp = ", ".join(f"{k}={v}" for k, v in cls.hyperparameters.items()) or "-"
        t.add_row(name, f"{cls.paper}\n[dim]{cls.official_code}[/dim]", ", ".join(cls.backbones), hp, nat)
    console.print(t)
    from wsss_bench.segmenters.registry import installed_segmenters

    with warnings.catch_warnings(record=True) as caught_seg:
        warnings.simplefilter("always")
        segs = installed_segmenters()
    t = Table(title="installed segmenters (--stage segmentation)", header_style="bold", show_lines=True)
    for col in ("name", "paper / official code", "backbones", "native test-time protocol"):
        t.add_column(col)
    for name, cls in segs.items():
        n = cls.native
        nat = (f"scales {', '.join(map(str, n.scales))}; flip {'yes' if n.flip else 'no'}; fusion {n.fusion}"
               + (f"; input {n.input_size}" if n.input_size else ""))
        t.add_row(name, f"{cls.paper}\n[dim]{cls.official_code}[/dim]", ", ".join(cls.backbones), nat)
    console.print(t)
    for w in [*caught, *caught_seg]:
        console.print(f"[yellow]warning:[/yellow] {w.message}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("methods")(methods_command)
