"""``wsss-bench datasets check|prepare|synth``: verify a dataset layout, build COCO masks, make the synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from wsss_bench.commands._options import (
    Crowd,
    Dataset,
    MaskIds,
    VocLabels,
    check_output_file,
    check_output_folder,
    value_of,
)
from wsss_bench.commands._ui import console, progress_bar
from wsss_bench.errors import WsssBenchError

datasets_app = typer.Typer(
    name="datasets",
    help="Check dataset layouts, prepare COCO semantic masks, generate the synthetic set.",
    no_args_is_help=True,
)

MAX_ROWS = 60


def _split_list(split: str | None) -> list[str] | None:
    if split is None:
        return None
    return [s.strip() for s in split.split(",") if s.strip()]


@datasets_app.command("check", no_args_is_help=True)
def check_command(
    dataset: Dataset = typer.Option(..., "--dataset", help="Dataset layout to check."),
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root (VOC: the folder holding "
                                   "JPEGImages/; COCO: the folder holding train2014/, val2014/, annotations/)."),
    split: str = typer.Option(None, "--split", help="Split(s) to check, comma-separated (default: every "
                              "split found: VOC train,val,test[,train_aug]; COCO train,val)."),
    labels: VocLabels = typer.Option(None, "--labels", show_default=False, help="VOC image labels: mask "
                                     "(default) or xml (also checks Annotations/*.xml)."),
    crowd: Crowd = typer.Option(None, "--crowd", show_default=False, help="COCO: crowd rule the cache must have "
                                "been built with."),
    masks: Path = typer.Option(None, "--masks", help="COCO: folder of pre-converted masks instead of the cache."),
    mask_ids: MaskIds = typer.Option(None, "--mask-ids", show_default=False, help="COCO --masks values: "
                                     "contiguous (1..80) or coco (raw category ids, remapped)."),
    cache: Path = typer.Option(None, "--cache", help="COCO mask cache (default <data-root>/wsss-bench-masks)."),
    keep_empty: bool = typer.Option(None, "--keep-empty/--drop-empty", help="COCO: keep images without "
                                    "annotations (default: dropped, as the protocol says)."),
    workers: int = typer.Option(2, "--workers", min=0, metavar="N", help="Worker processes."),
    quick: bool = typer.Option(False, "--quick", help="Read image headers only (skip full JPEG decoding)."),
    json_out: Path = typer.Option(None, "--json", metavar="FILE",
                                  help="Also write the full report as JSON to this file."),
) -> None:
    """Verify a dataset layout before a run; exits with code 2 if any error is found.

    Every id has its image and mask, masks are single-channel palette/greyscale with values in the
    class set, image and mask sizes agree, split sizes match the protocol (a mismatch is only a
    warning, so subsets work). Each problem names its file.

    Example: [bold]wsss-bench datasets check --dataset voc --data-root VOCdevkit/VOC2012 --split train,val[/bold]
    """
    if json_out is not None:  # before the (long) check, not after it
        check_output_file(json_out, "--json")
    from wsss_bench.data.check import check_dataset
    from wsss_bench.io import atomic_write_json

    with progress_bar("checking") as update:
        def prog(split_name: str, done: int, total: int) -> None:
            update(done, total)

        report = check_dataset(value_of(dataset), data_root, _split_list(split), workers=workers,
                               decode_images=not quick, progress=prog, labels=value_of(labels),
                               crowd=value_of(crowd), masks=masks, mask_ids=value_of(mask_ids), cache=cache,
                               keep_empty=keep_empty)
    sizes = ", ".join(f"{k} {v}" for k, v in report.splits.items()) or "none opened"
    console.print(f"{report.dataset} at {report.root}: splits {sizes}; {report.images_checked} images checked")
    ordered = report.errors + report.warnings
    for p in ordered[:MAX_ROWS]:
        colour = "red" if p.severity == "error" else "yellow"
        console.print(f"[{colour}]{p.severity:7s}[/{colour}] {escape(p.path)}: {escape(p.message)}",
                      soft_wrap=True)
    if len(ordered) > MAX_ROWS:
        console.print(f"... and {len(ordered) - MAX_ROWS} more (use --json FILE for the full list)")
    if json_out is not None:
        try:
            atomic_write_json(json_out, report.to_json())
        except OSError as e:  # a full disk, a folder that went away meanwhile
            raise WsssBenchError(f"--json: cannot write the report ({e.strerror or e})", json_out) from None
    n_err, n_warn = len(report.errors), len(report.warnings)
    if n_err:
        # a WsssBenchError is how a command exits non-zero here (cli.main turns it into exit code 2)
        raise WsssBenchError(f"{n_err} error(s), {n_warn} warning(s): the dataset layout is not usable as is",
                             report.root)
    console.print(f"[green]ok[/green]: no errors, {n_warn} warning(s)")


@datasets_app.command("prepare", no_args_is_help=True)
def prepare_command(
    dataset: str = typer.Argument(..., help="Dataset to prepare: coco."),
    data_root: Path = typer.Option(..., "--data-root", help="COCO root holding annotations/instances_*2014.json."),
    split: str = typer.Option("train,val", "--split", help="Split(s), comma-separated: train, val."),
    cache: Path = typer.Option(None, "--cache", help="Cache folder (default <data-root>/wsss-bench-masks); "
                               "masks go to <cache>/<split>2014/<id>.png with a manifest.json."),
    crowd: Crowd = typer.Option(Crowd("ignore"), "--crowd", help="Crowd regions: ignore (255) or background."),
    workers: int = typer.Option(None, "--workers", min=1, metavar="N",
                                help="Worker processes (default: all CPU cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cache is up to date."),
) -> None:
    """Build and cache the COCO 2014 semantic masks (worker processes).

    Masks follow docs/protocol.md: pycocotools rasterisation, contiguous ids 1..80, smaller instance
    wins, crowd -> ignore by default. They are cached as PNG with a manifest (builder version,
    options, annotation SHA-256); an up-to-date cache is left alone, a stale one is rebuilt.

    Example: [bold]wsss-bench datasets prepare coco --data-root coco2014 --split val --workers 8[/bold]
    """
    if dataset.lower() != "coco":
        raise WsssBenchError(f"only coco needs preparing (got {dataset!r}); VOC and synthetic masks are read as they are")
    if cache is not None:
        check_output_folder(cache, "--cache")
    from wsss_bench.data.coco import prepare_coco_masks

    for s in _split_list(split) or []:
        with progress_bar(f"coco {s} masks") as update:
            res = prepare_coco_masks(data_root, s, cache=cache, crowd=value_of(crowd), workers=workers, force=force,
                                     progress=update)
        if res.status == "up to date":
            console.print(f"coco {s}: cache up to date ({res.num_images} images) at {res.cache}")
            continue
        per_k = 1000 * res.seconds / max(res.num_instances, 1)
        console.print(f"coco {s}: {res.status}: {res.num_images} masks ({res.num_empty} images without "
                      f"annotations, kept out of the split by default), {res.num_instances} instances in "
                      f"{res.seconds:.1f} s ({per_k:.2f} s per 1,000 instances) -> {res.cache}")


@datasets_app.command("synth", no_args_is_help=True)
def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write (VOC layout); replaced if it holds an older "
                             "synthetic set, refused if it holds anything else."),
    images: int = typer.Option(200, "--images", min=4, metavar="N", help="Number of images (every 4th goes to val)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    min_size: int = typer.Option(96, "--min-size", min=32, max=4096, metavar="PX", help="Smallest image side in pixels."),
    max_size: int = typer.Option(128, "--max-size", min=32, max=4096, metavar="PX", help="Largest image side in pixels."),
) -> None:
    """Generate the synthetic shapes dataset in VOC layout (deterministic from --seed).

    Circles, squares, triangles, stars and rings on textured, noisy backgrounds; read it with
    --dataset synthetic --data-root DIR (splits train and val).

    Example: [bold]wsss-bench datasets synth --out shapes --images 400 --seed 0[/bold]
    """
    check_output_folder(out, "--out")
    from wsss_bench.data.synthetic import MANIFEST_NAME, generate

    path = generate(out, num_images=images, seed=seed, size=(min_size, max_size))
    man = json.loads((path / MANIFEST_NAME).read_text())
    console.print(f"synthetic set: {man['splits']['train']} train + {man['splits']['val']} val images, "
                  f"seed {seed}, sides {min_size}-{max_size} px -> {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
