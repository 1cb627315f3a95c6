"""``wsss-bench train-seg``: a segmenter trained on a folder of pseudo labels under a declared recipe."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from wsss_bench.commands._options import Dataset, Precision, Settings, parse_hparams, value_of
from wsss_bench.commands._ui import console, fmt_duration, pct, progress_mode, summary_lines
from wsss_bench.errors import WsssBenchError


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def training_progress(description: str, every: int = 10) -> Iterator[Any]:
    """Yields ``update(done, total, loss, lr)``: a rich bar with loss, lr and ETA on a terminal, a plain
    line every ``every`` iterations (and the last) otherwise, nothing with ``WSSS_BENCH_PROGRESS=off``
    (:func:`~wsss_bench.commands._ui.progress_mode`, as every command). Only rank 0 shows anything."""
    mode = progress_mode(sys.stdout)
    if _rank() != 0 or mode == "off":
        yield lambda *a: None
        return
    if mode == "bar":
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}"), TimeElapsedColumn(),
                      TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as prog:
            task = prog.add_task(description, total=None, loss="-", lr="-")

            def update(done: int, total: int, loss: float, lr: float) -> None:
                prog.update(task, completed=done, total=total, loss=f"{loss:.4f}", lr=f"{lr:.2e}")

            yield update
        return
    t0 = time.perf_counter()
    first: list[int] = []

    def plain(done: int, total: int, loss: float, lr: float) -> None:
        if not first:
            first.append(done - 1)
        if done % every and done != total:
            return
        elapsed = time.perf_counter() - t0
        rate = (done - first[0]) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"{description}: iteration {done}/{total} loss {loss:.4f} lr {lr:.3e} "
              f"elapsed {fmt_duration(elapsed)} eta {fmt_duration(eta)}", flush=True)

    yield plain


def train_seg_command(
    pseudo: Path = typer.Option(..., "--pseudo", help="Folder of pseudo-label PNGs <id>.png (class indices, "
                                "255 ignored), e.g. from `wsss-bench run --save-pseudo`."),
    pseudo_record: Path = typer.Option(None, "--pseudo-record", help="The pseudo-label run record (or a "
                                       "wsss-bench-pseudo.json); default: DIR/wsss-bench-pseudo.json if present."),
    dataset: Dataset = typer.Option(Dataset("voc"), "--dataset", help="Dataset."),
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root folder."),
    split: str = typer.Option("train_aug", "--split", help="Training split (its ids must all have a PNG)."),
    val_split: str = typer.Option("val", "--val-split", help="Split the trained segmenter is scored on."),
    segmenter: str = typer.Option(None, "--segmenter", help="deeplabv2 or deeplabv3plus (default: the recipe's)."),
    recipe: str = typer.Option(None, "--recipe", help="Recipe name (deeplabv2-voc, deeplabv2-coco, deeplabv3plus-voc, "
                               "tiny-synthetic) or a .toml file; default <segmenter>-<dataset>."),
    init: Path = typer.Option(None, "--init", help="ImageNet initial weights: a torchvision or timm ResNet state "
                              "dict (.pth via weights_only, or .safetensors). Nothing is downloaded."),
    out: Path = typer.Option(..., "--out", help="Training folder: checkpoints, log, loss plot, weights, record. "
                             "Rerunning the same command here resumes."),
    name: str = typer.Option(None, "--name", help="Record name (default: <pseudo record>-<recipe>)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, sampling and augmentation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (cuda:LOCAL_RANK under torchrun)."),
    precision: Precision = typer.Option(Precision("fp32"), "--precision",
                                        help="Autocast precision (fp16 on CUDA only)."),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader worker processes per rank."),
    settings: Settings = typer.Option(None, "--settings",
                                      help="Test-time protocol on val (default: the recipe's, standard)."),
    iterations: int = typer.Option(None, "--iterations", min=1, help="Override the recipe's iterations (recorded)."),
    micro_batch: int = typer.Option(None, "--micro-batch", min=1, help="Override the samples per forward pass "
                                    "(recorded; with trained batch norms it changes their statistics)."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", min=1, help="Checkpoint every N iterations."),
    eval_batch_size: int = typer.Option(1, "--eval-batch-size", min=1,
                                        help="Same-size val images per forward pass."),
    data_opt: list[str] = typer.Option(None, "--data-opt", help="Dataset option KEY=VALUE (repeatable)."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard a previous run in --out instead of resuming it."),
) -> None:
    """Train a segmenter on pseudo labels under a declared recipe, then score it on val.

    The recipe fixes crop, scales, batch, iterations, optimiser and schedule, so every method's pseudo
    labels train the same segmenter the same way. Under torchrun each rank takes batch / world samples
    (the same global batch, the same samples: results do not depend on the number of ranks).

    Examples:

    [bold]wsss-bench train-seg --pseudo pseudo/cam --dataset voc --data-root VOC2012 --split train_aug
    --recipe deeplabv2-voc --init resnet101.pth --out seg/cam[/bold]

    [bold]torchrun --nproc-per-node 2 -m wsss_bench train-seg --pseudo pseudo/cam ... --device cuda
    --precision bf16 --out seg/cam[/bold]

    [bold]wsss-bench train-seg --pseudo shapes/SegmentationClass --dataset synthetic --data-root shapes
    --split train --recipe tiny-synthetic --out seg/gt[/bold]
    """
    from wsss_bench.training.loop import TrainConfig, resolve_recipe, train_segmenter
    from wsss_bench.training.recipes import recipe_names

    if recipe is None:
        if segmenter is None:
            raise WsssBenchError("give --recipe NAME (or --segmenter, for the recipe <segmenter>-<dataset>); "
                                 f"packaged recipes: {', '.join(recipe_names())}")
        recipe = f"{segmenter}-{value_of(dataset)}"
    cfg = TrainConfig(
        pseudo_dir=str(pseudo), data_root=str(data_root), out=str(out), dataset=value_of(dataset), split=split,
        val_split=val_split, recipe=recipe, segmenter=segmenter, init=None if init is None else str(init),
        pseudo_record=None if pseudo_record is None else str(pseudo_record), seed=seed, device=device,
        precision=value_of(precision), workers=workers, name=name, settings=value_of(settings),
        iterations=iterations,
        micro_batch=micro_batch, checkpoint_every=checkpoint_every, eval_batch_size=eval_batch_size, fresh=fresh,
        dataset_options=parse_hparams(data_opt, "--data-opt"))
    main_rank = _rank() == 0

    def say(msg: str) -> None:
        if main_rank:
            console.print(msg, highlight=False, markup=False, soft_wrap=True)

    try:
        label = resolve_recipe(cfg).name
        with training_progress(f"train-seg {label}") as update:
            res = train_segmenter(cfg, progress=update, log=say)
    except WsssBenchError:
        if not main_rank:  # rank 0 reports the same error; the other ranks leave quietly
            raise typer.Exit(2) from None
        raise
    rec = res.record
    if rec is None:
        return
    for line in summary_lines(rec):
        console.print(f"[bold]{rec['name']}[/bold]: {line}", soft_wrap=True)
    tr, pl = rec["training"], rec["pipeline"]
    pseudo_note = f"pseudo labels {pl['pseudo_record'] or pl['pseudo_dir']}"
    if pl.get("pseudo_miou") is not None:
        pseudo_note += f" (pseudo mIoU {pct(pl['pseudo_miou'])})"
    console.print(f"{pseudo_note} -> {pl['recipe']} v{pl['recipe_version']} ({tr['iterations']} iterations, "
                  f"{tr['seconds']:.0f} s on {tr['world_size']} rank(s)) -> val mIoU {pct(rec['metrics']['miou'])}",
                  soft_wrap=True, markup=False, highlight=False)
    console.print(f"log: {tr['log']}  loss plot: {tr['loss_plot']}  weights: {tr['model']}", soft_wrap=True,
                  markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train-seg")(train_seg_command)
