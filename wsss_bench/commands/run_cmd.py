"""``wsss-bench run`` (the main job) and ``wsss-bench methods``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from wsss_bench.commands._options import (
    MAX_THRESHOLDS,
    CacheDtype,
    Dataset,
    Precision,
    Refine,
    Settings,
    Stage,
    click_module,
    literal,  # noqa: F401 - re-exported (tests and older imports read it from here)
    parse_floats,
    parse_hparams,
    value_of,
)
from wsss_bench.commands._ui import (
    console,
    detail_block,
    err_console,
    progress_bar,
    summary_lines,
    summary_table,
)
from wsss_bench.errors import WsssBenchError


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
    for i, r in enumerate(runs, 1):
        if not isinstance(r, dict):
            raise WsssBenchError(f"[[run]] #{i} must be a table of KEY = VALUE, got {r!r}", path)
    return data, runs


# panels of ``wsss-bench run --help``
_METHOD, _DATA, _TTA, _COMPUTE = "Method", "Data", "Test-time settings", "Compute"
_OUTPUT, _PSEUDO, _SEG, _DEMO = "Output", "Pseudo labels and sweep", "Segmentation stage", "Demo (no --method)"

#: Options the demo takes (``wsss-bench run`` with no method, segmenter or suite file)
DEMO_OPTIONS = ("out", "device", "workers", "demo_images", "jobs", "with_segmenter")
#: Options that apply to the demo only
DEMO_ONLY = ("demo_images", "jobs", "with_segmenter")
#: Command-line options that apply to every run of a suite file (they override the file's values)
SUITE_OPTIONS = ("out", "device", "workers")


def _given(ctx: typer.Context) -> list[str]:
    """Names of the parameters given on the command line, in declaration order."""
    src = click_module().core.ParameterSource
    return [p.name for p in ctx.command.params
            if p.name and ctx.get_parameter_source(p.name) in (src.COMMANDLINE, src.ENVIRONMENT)]


def _flags(ctx: typer.Context, names: list[str]) -> str:
    """``--a, --b and --c`` for parameter names (their first long flag)."""
    by_name = {p.name: p for p in ctx.command.params}
    flags = []
    for n in names:
        opts = [o for o in by_name[n].opts if o.startswith("--")] or list(by_name[n].opts) or [n.upper()]
        flags.append(opts[0] if by_name[n].param_type_name == "option" else n.upper())
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


def _applies(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


def preflight(cfg: Any) -> None:
    """Everything about one run that can be checked before any work: the options' values
    (:meth:`RunConfig.validate`), the output folders, the dataset options, and that the method or
    segmenter exists and takes the backbone and hyper-parameters given. Writes nothing."""
    from wsss_bench.data import DATASET_OPTIONS
    from wsss_bench.data.layout import check_options
    from wsss_bench.inference.device import resolve_device
    from wsss_bench.inference.runner import check_output_folder
    from wsss_bench.plugins import resolve_backbone, resolve_hparams

    cfg.validate()
    resolve_device(cfg.device)
    outputs = [("--out", cfg.out)]
    if cfg.stage == "segmentation":
        outputs.append(("--save-pred", cfg.save_pred))
    else:
        outputs += [("--save-cams", cfg.save_cams), ("--save-pseudo", cfg.save_pseudo)]
    for option, value in outputs:
        if value:
            check_output_folder(value, option)
    key = str(cfg.dataset).lower()
    if key in DATASET_OPTIONS:  # an unknown dataset is named by build_dataset
        check_options(key, {k: v for k, v in cfg.dataset_options.items() if v is not None}, DATASET_OPTIONS[key])
    if cfg.stage == "segmentation":
        from wsss_bench.segmenters.registry import load_segmenter

        cls, label = load_segmenter(cfg.segmenter), f"segmenter {cfg.segmenter!r}"
        if not cfg.checkpoint:
            raise WsssBenchError(f"{label} needs --checkpoint FILE")
    else:
        from wsss_bench.methods.registry import load_method

        cls, label = load_method(cfg.method), f"method {cfg.method!r}"
        if cls.needs_checkpoint and not cfg.checkpoint:
            raise WsssBenchError(f"{label} needs --checkpoint FILE (a {cfg.method} checkpoint)")
    resolve_backbone(label, cls.backbones, cfg.backbone)
    resolve_hparams(label, cls.hyperparameters, cfg.hparams)


def run_command(
    ctx: typer.Context,
    config: Path = typer.Argument(
        None, exists=True, dir_okay=False, show_default=False, metavar="SUITE.toml",
        help=escape("A TOML suite file: top-level defaults (any run option, e.g. dataset = \"voc\") and [[run]] "
                    "tables, one per run. --out, --device and --workers given here override the file.")),
    method: str = typer.Option(None, "--method", "-m", rich_help_panel=_METHOD,
                               help="Method adapter name (see `wsss-bench methods`)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", exists=True, dir_okay=False, rich_help_panel=_METHOD,
                                    help="Checkpoint file (.pth, read with weights_only, or .safetensors)."),
    backbone: str = typer.Option(None, "--backbone", rich_help_panel=_METHOD,
                                 help="Backbone variant of the method (default: the paper's)."),
    hparam: list[str] = typer.Option(None, "--hparam", rich_help_panel=_METHOD, metavar="KEY=VALUE",
                                     help="Hyper-parameter override (repeatable)."),
    dataset: Dataset = typer.Option(Dataset("synthetic"), "--dataset", rich_help_panel=_DATA, help="Dataset."),
    data_root: Path = typer.Option(None, "--data-root", exists=True, file_okay=False, rich_help_panel=_DATA,
                                   help="Dataset root folder (VOC: the one holding JPEGImages/)."),
    split: str = typer.Option("train", "--split", rich_help_panel=_DATA,
                              help="Split to score (VOC train is the protocol's for pseudo labels)."),
    limit: int = typer.Option(None, "--limit", min=1, metavar="N", rich_help_panel=_DATA,
                              help="Only the first N images of the split (quick checks; the record says so)."),
    data_opt: list[str] = typer.Option(None, "--data-opt", rich_help_panel=_DATA, metavar="KEY=VALUE",
                                       help="Dataset option (repeatable): VOC labels=mask|xml; COCO "
                                       "crowd=ignore|background, masks=DIR, mask_ids=contiguous|coco, "
                                       "keep_empty=true, cache=DIR."),
    settings: Settings = typer.Option(Settings("native"), "--settings", rich_help_panel=_TTA, metavar="NAME",
                                      help="native (the method's own test-time pipeline) or standard (the "
                                      "shared one); native+crf and standard+crf: segmentation stage only."),
    scales: str = typer.Option(None, "--scales", rich_help_panel=_TTA, metavar="S,S,...",
                               help="Override the scales, e.g. 1.0,0.5,1.5,2.0."),
    flip: bool = typer.Option(None, "--flip/--no-flip", rich_help_panel=_TTA, show_default=False,
                              help="Override flip test-time augmentation."),
    device: str = typer.Option("auto", "--device", rich_help_panel=_COMPUTE, help="auto, cpu, cuda or cuda:N."),
    precision: Precision = typer.Option(Precision("fp32"), "--precision", rich_help_panel=_COMPUTE,
                                        help="Autocast precision (fp16 on CUDA only)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, metavar="N", rich_help_panel=_COMPUTE,
                                   help="Images of equal size per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, metavar="N", rich_help_panel=_COMPUTE,
                                help="Loader worker processes for decoding."),
    out: Path = typer.Option(Path("wsss-bench-runs"), "--out", rich_help_panel=_OUTPUT,
                             help="Folder for records (the demo's default: wsss-bench-demo)."),
    name: str = typer.Option(None, "--name", rich_help_panel=_OUTPUT,
                             help="Record name (default: <method>-<settings>)."),
    save_cams: Path = typer.Option(None, "--save-cams", rich_help_panel=_OUTPUT,
                                   help="Save maps as <id>.npz here; doubles as a resumable cache."),
    cache_dtype: CacheDtype = typer.Option(CacheDtype("float32"), "--cache-dtype", rich_help_panel=_OUTPUT,
                                           help="Precision of the --save-cams maps: float32 (what the evaluator "
                                           "scores, exact on resume) or float16 (half the disk; the evaluator then "
                                           "scores float16-rounded maps and the record says so)."),
    fresh: bool = typer.Option(False, "--fresh", rich_help_panel=_OUTPUT,
                               help="Ignore (and overwrite) an existing map cache."),
    resume: bool = typer.Option(True, "--resume/--no-resume", rich_help_panel=_OUTPUT,
                                help="Reuse cached maps (with --save-cams)."),
    save_pseudo: Path = typer.Option(None, "--save-pseudo", rich_help_panel=_PSEUDO,
                                     help="Write VOC-palette PNG pseudo labels here."),
    threshold: str = typer.Option("best", "--threshold", rich_help_panel=_PSEUDO, metavar="RULE|T",
                                  help="Threshold of the --save-pseudo labels: best, native, calibrated or a "
                                  "number in [0, 1)."),
    ignore_band: str = typer.Option(None, "--ignore-band", rich_help_panel=_PSEUDO, metavar="LO,HI",
                                    help="--save-pseudo labels: 255 where LO <= top score < HI."),
    num_thresholds: int = typer.Option(100, "--num-thresholds", min=1, max=MAX_THRESHOLDS, metavar="T", rich_help_panel=_PSEUDO,
                                       help=f"Thresholds of the mIoU sweep: 0, 1/T, ..., (T-1)/T (T in 1..{MAX_THRESHOLDS})."),
    thresholds_alias: int = typer.Option(None, "--thresholds", hidden=True,
                                         help="Deprecated spelling of --num-thresholds."),
    refine: Refine = typer.Option(None, "--refine", rich_help_panel=_PSEUDO, show_default=False, metavar="KIND",
                                  help="Also score a refined row (never the headline) with EDAM's rules: crf, "
                                  "saliency or crf+saliency (crf needs the \\[crf] extra)."),
    saliency: Path = typer.Option(None, "--saliency", exists=True, file_okay=False, rich_help_panel=_PSEUDO,
                                  help="Folder of saliency maps <id>.png for --refine saliency."),
    stage: Stage = typer.Option(Stage("pseudo"), "--stage", rich_help_panel=_SEG,
                                help="pseudo (localisation maps -> pseudo labels) or segmentation (a "
                                "segmenter's final predictions)."),
    segmenter: str = typer.Option(None, "--segmenter", rich_help_panel=_SEG,
                                  help="Segmenter for --stage segmentation (see `wsss-bench methods`)."),
    save_pred: Path = typer.Option(None, "--save-pred", rich_help_panel=_SEG,
                                   help="Write palette PNG predictions here (on VOC test: also the server "
                                   "archive)."),
    demo_images: int = typer.Option(None, "--demo-images", min=4, metavar="N", rich_help_panel=_DEMO,
                                    help="Number of synthetic images (default 160)."),
    jobs: int = typer.Option(None, "--jobs", min=1, metavar="N", rich_help_panel=_DEMO,
                             help="Runs at a time, each in its own process with one thread (default: one "
                             "per CPU core, at most 4; 1 on a GPU)."),
    with_segmenter: bool = typer.Option(False, "--with-segmenter", rich_help_panel=_DEMO,
                                        help="Also the final stage: a tiny segmenter (recipe tiny-synthetic) "
                                        "trained on each method's pseudo labels at its calibrated threshold, "
                                        "scored on val (6 trainings of ~25 s CPU each: about 1.5 minutes more on 2 cores)."),
) -> None:
    """Run methods' localisation-map inference over a split and score it under the protocol.

    With no method, segmenter or suite file: the embedded demo (synthetic shapes, the shipped demo
    weights, every method under native and standard settings).

    Examples:

    [bold]wsss-bench run[/bold]

    [bold]wsss-bench run --method cam --checkpoint res50_cam.pth --dataset voc --data-root VOC2012[/bold]

    [bold]wsss-bench run --stage segmentation --segmenter deeplabv2 -c seg.pth --dataset voc --data-root
    VOC2012 --split val[/bold]

    [bold]wsss-bench run suite.toml --out records/[/bold]
    """
    given = _given(ctx)
    if thresholds_alias is not None:
        if not 1 <= thresholds_alias <= MAX_THRESHOLDS:
            raise WsssBenchError(f"--num-thresholds must be in 1..{MAX_THRESHOLDS}, got {thresholds_alias}")
        err_console.print("warning: --thresholds is deprecated; use --num-thresholds", markup=False)
        num_thresholds = thresholds_alias
        given = [g if g != "thresholds_alias" else "num_thresholds" for g in given]
    if config is None and method is None and segmenter is None and "stage" not in given:
        extra = [g for g in given if g not in DEMO_OPTIONS]
        if extra:
            raise WsssBenchError(
                f"{_flags(ctx, extra)} need{'s' if len(extra) == 1 else ''} --method NAME, --stage segmentation "
                f"--segmenter NAME or a suite file (without them `wsss-bench run` runs the demo, which takes "
                f"only --out, --device, --workers, --demo-images, --jobs and --with-segmenter)")
        _run_demo(out if "out" in given else Path("wsss-bench-demo"), demo_images, device, workers, jobs,
                  with_segmenter)
        return
    demo_only = [g for g in given if g in DEMO_ONLY]
    if demo_only:
        raise WsssBenchError(f"{_flags(ctx, demo_only)} {_applies(demo_only)} to the demo only (`wsss-bench run` "
                             f"with no --method, --segmenter or suite file)")
    cfgs, specs = _configs(ctx, given, config, dict(
        method=method, checkpoint=checkpoint, backbone=backbone, hparam=hparam, dataset=value_of(dataset),
        data_root=data_root, split=split, limit=limit, data_opt=data_opt, settings=value_of(settings),
        scales=scales, flip=flip, device=device, precision=value_of(precision), batch_size=batch_size,
        workers=workers, out=out, name=name, save_cams=save_cams, cache_dtype=value_of(cache_dtype), fresh=fresh,
        resume=resume, save_pseudo=save_pseudo, threshold=threshold, ignore_band=ignore_band, num_thresholds=num_thresholds,
        refine=value_of(refine), saliency=saliency, stage=value_of(stage), segmenter=segmenter,
        save_pred=save_pred))
    for cfg in cfgs:  # every run of a suite is checked before the first starts
        preflight(cfg)
    from wsss_bench.training.chain import check_chains

    trains = check_chains(list(zip(cfgs, specs, strict=True)))  # and every chained training
    _execute(cfgs, trains)


def _configs(ctx: typer.Context, given: list[str], config: Path | None, o: dict[str, Any]
             ) -> tuple[list[Any], list[Any]]:
    """The RunConfigs asked for: one from the options, or one per ``[[run]]`` of a suite file; and
    for each, its chained training (a :class:`~wsss_bench.training.chain.ChainSpec` from the suite's
    ``train_seg`` tables, or ``None``)."""
    from wsss_bench.inference import RunConfig, config_from_dict
    from wsss_bench.training.chain import SUITE_KEY, check_table, parse_spec

    def opt_path(p: Path | None) -> str | None:
        return None if p is None else str(p)

    if config is not None:
        ignored = [g for g in given if g not in SUITE_OPTIONS and g != "config"]
        if ignored:
            raise WsssBenchError(f"{_flags(ctx, ignored)} cannot be combined with a suite file: set them in "
                                 f"its tables (only --out, --device and --workers apply to every run)", config)
        defaults, runs = load_suite(config)
        chain_defaults = defaults.pop(SUITE_KEY, None)
        if chain_defaults is not None:
            chain_defaults = check_table(chain_defaults, f"{config} [{SUITE_KEY}]")
        base = {"device": o["device"], "workers": o["workers"], "out": str(o["out"])}
        override = {k: v for k, v in base.items() if k in given}
        cfgs, specs = [], []
        for i, r in enumerate(runs, 1):
            where = f"{config} [[run]] #{i}"
            r = dict(r)
            chain = r.pop(SUITE_KEY, None)
            cfgs.append(config_from_dict({**base, **defaults, **r, **override}, where=where))
            spec = parse_spec(chain_defaults, chain, where)
            if spec is not None:  # --device and --workers given here apply to the training too
                spec.values.update({k: v for k, v in override.items() if k in ("device", "workers")})
            specs.append(spec)
        return cfgs, specs
    if o["stage"] == "segmentation":
        if o["method"] is not None:
            raise WsssBenchError("--method names a pseudo-label method; --stage segmentation takes --segmenter NAME")
        wrong = [g for g in given if g in ("save_cams", "cache_dtype", "save_pseudo", "ignore_band", "refine", "saliency",
                                            "fresh", "resume", "threshold")]
        if wrong:
            raise WsssBenchError(f"{_flags(ctx, wrong)} {_applies(wrong)} to --stage pseudo only")
    else:
        if o["segmenter"] is not None:
            raise WsssBenchError("--segmenter NAME needs --stage segmentation")
        if o["save_pred"] is not None:
            raise WsssBenchError("--save-pred applies to --stage segmentation; pseudo labels go to --save-pseudo DIR")
    return [RunConfig(
        method=o["method"] or "", checkpoint=opt_path(o["checkpoint"]), backbone=o["backbone"],
        hparams=parse_hparams(o["hparam"]), name=o["name"], stage=o["stage"], segmenter=o["segmenter"],
        save_pred=opt_path(o["save_pred"]), dataset=o["dataset"], data_root=opt_path(o["data_root"]),
        split=o["split"], settings=o["settings"], scales=parse_floats(o["scales"], "--scales"), flip=o["flip"],
        device=o["device"], precision=o["precision"], batch_size=o["batch_size"], workers=o["workers"],
        out=str(o["out"]), save_cams=opt_path(o["save_cams"]), cache_dtype=o["cache_dtype"],
        fresh=o["fresh"] or not o["resume"],
        save_pseudo=opt_path(o["save_pseudo"]), threshold=o["threshold"],
        ignore_band=parse_floats(o["ignore_band"], "--ignore-band", 2), num_thresholds=o["num_thresholds"],
        limit=o["limit"], refine=o["refine"], saliency_dir=opt_path(o["saliency"]),
        dataset_options=parse_hparams(o["data_opt"], "--data-opt"))], [None]


def _run_demo(out: Path, images: int | None, device: str, workers: int, jobs: int | None,
              with_segmenter: bool = False) -> None:
    from wsss_bench.demo import run_demo
    from wsss_bench.inference.device import resolve_device
    from wsss_bench.inference.runner import check_output_folder

    check_output_folder(out, "--out")
    resolve_device(device)
    run_demo(out=out, images=images, device=device, workers=workers, jobs=jobs, with_segmenter=with_segmenter)


def _execute(cfgs: list[Any], trains: list[Any] | None = None) -> None:
    """Run each config; after a run whose suite table chains a training (``trains[i]``, a
    :class:`~wsss_bench.training.TrainConfig`), train the segmenter on its pseudo labels."""
    from wsss_bench.inference import run_method, run_segmentation_stage

    records = []
    for cfg, train in zip(cfgs, trains or [None] * len(cfgs), strict=True):
        with progress_bar(cfg.run_name(), unit="images") as update:
            if cfg.stage == "segmentation":
                res = run_segmentation_stage(cfg, progress=update)
            else:
                res = run_method(cfg, progress=update)
        if res.record is not None:  # None: another torchrun rank
            label = f"[bold]{escape(cfg.run_name())}[/bold]"
            if res.record.get("kind") == "export":
                console.print(f"{label}: {res.record['num_images']} predictions in "
                              f"{escape(str(res.record['predictions']))}; VOC server archive: "
                              f"{escape(str(res.record.get('export')))}")
            else:
                records.append(res.record)
                for line in summary_lines(res.record):
                    console.print(f"{label}: {escape(line)}")
                console.print(f"record: {escape(str(res.record_path))}")
        if train is not None:  # every rank trains (DDP under torchrun)
            rec = _train_chained(cfg, train)
            if rec is not None:
                records.append(rec)
    if len(records) > 1:
        console.print(summary_table(records))


def _train_chained(run: Any, train: Any) -> dict[str, Any] | None:
    """The chained training of ``run``: train-seg's progress, then its summary and record path."""
    from wsss_bench.commands.train_cmd import training_progress
    from wsss_bench.training.loop import resolve_recipe, train_segmenter

    recipe = resolve_recipe(train)
    with training_progress(f"train-seg {run.run_name()} ({recipe.name})") as update:
        res = train_segmenter(train, progress=update)
    rec = res.record
    if rec is None:
        return None
    label = f"[bold]{escape(str(rec['name']))}[/bold]"
    for line in summary_lines(rec):
        console.print(f"{label}: {escape(line)}")
    console.print(f"record: {escape(str(res.record_path))}  (trained in {escape(str(res.out))})")
    return rec


def methods_command() -> None:
    """List installed method adapters and segmenters (entry-point groups wsss_bench.methods, wsss_bench.segmenters).

    One block per method: paper, official code, backbones, hyper-parameters and native test-time
    settings; URLs are never cut (they wrap at the terminal's width).

    Example: [bold]wsss-bench methods[/bold]
    """
    import warnings

    from wsss_bench.methods.registry import installed_methods
    from wsss_bench.segmenters.registry import installed_segmenters

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = installed_methods()
        segs = installed_segmenters()
    console.print(f"[bold]installed methods[/bold] ({len(found)}; use with --method NAME)")
    for name, cls in found.items():
        n = cls.native
        nat = (f"scales {', '.join(map(str, n.scales))} ({n.resize}); flip {'yes' if n.flip else 'no'} "
               f"({n.flip_fusion}); scales {n.scale_fusion}; {n.normalization} norm. at {n.fuse_at} size; "
               f"input {n.input_size or 'as is'}; background {n.background.rule} {n.background.value}")
        hp = ", ".join(f"{k}={v}" for k, v in cls.hyperparameters.items()) or "-"
        console.print(detail_block(name, [("paper", cls.paper), ("code", cls.official_code),
                                          ("backbones", ", ".join(cls.backbones)), ("hyper-parameters", hp),
                                          ("native settings", nat)]))
    console.print(f"[bold]installed segmenters[/bold] ({len(segs)}; use with --stage segmentation "
                  f"--segmenter NAME)")
    for name, cls in segs.items():
        n = cls.native
        nat = (f"scales {', '.join(map(str, n.scales))}; flip {'yes' if n.flip else 'no'}; fusion {n.fusion}"
               + (f"; input {n.input_size}" if n.input_size else ""))
        console.print(detail_block(name, [("paper", cls.paper), ("code", cls.official_code),
                                          ("backbones", ", ".join(cls.backbones)), ("native test-time", nat)]))
    for w in caught:
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(w.message))}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("methods")(methods_command)
