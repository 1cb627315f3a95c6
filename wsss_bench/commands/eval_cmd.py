"""``wsss-bench eval``: score a folder of predicted masks or localisation maps."""

from __future__ import annotations

from pathlib import Path

import typer

from wsss_bench.commands._ui import console, per_class_table, progress_bar, summary_lines
from wsss_bench.data.classes import get_classset
from wsss_bench.errors import WsssBenchError


def eval_command(
    pred: Path = typer.Option(None, "--pred", help="Folder of predicted masks, one <id>.png per image "
                              "(class-index values, palette or greyscale)."),
    cams: Path = typer.Option(None, "--cams", help="Folder of localisation maps: IRN-style <id>.npy dicts "
                              "(keys, high_res|cam) or wsss-bench <id>.npz (classes, scores)."),
    gt: Path = typer.Option(None, "--gt", help="Folder of ground-truth masks <id>.png (use with --classes)."),
    classes: str = typer.Option("voc", "--classes", help="Label space for --gt: voc, coco, synthetic or a "
                                "class count (background included)."),
    dataset: str = typer.Option(None, "--dataset", help="Read ground truth from a dataset: voc, coco, synthetic."),
    data_root: Path = typer.Option(None, "--data-root", help="Dataset root (with --dataset)."),
    split: str = typer.Option(None, "--split", help="Split (with --dataset; default train)."),
    out: Path = typer.Option(Path("wsss-bench-eval"), "--out", help="Folder for the record and per-image counts."),
    name: str = typer.Option(None, "--name", help="Record name (default: eval-<folder>)."),
    labels: str = typer.Option("gt", "--labels", help="Image label set for maps: gt (from the mask) or maps "
                               "(the classes each map file lists)."),
    thresholds: int = typer.Option(100, "--thresholds", help="Number of sweep thresholds T."),
    native_threshold: float = typer.Option(None, "--native-threshold",
                                           help="Also report mIoU at this threshold (e.g. 0.15 for IRN)."),
    workers: int = typer.Option(2, "--workers", help="Worker processes for decoding files."),
) -> None:
    """Score what any code base produced, without a method adapter.

    Example: [bold]wsss-bench eval --cams irn/result/cam --dataset voc --data-root VOC2012 --split train
    --native-threshold 0.15 --out records/[/bold]
    """
    from wsss_bench.evaluate import GroundTruth, eval_cams, eval_predictions
    from wsss_bench.records import write_record

    if (pred is None) == (cams is None):
        raise WsssBenchError("give exactly one of --pred DIR or --cams DIR")
    if (gt is None) == (dataset is None):
        raise WsssBenchError("give the ground truth as --gt DIR (with --classes) or --dataset with --data-root")
    if gt is not None:
        truth = GroundTruth.from_folder(gt, get_classset(classes), split)
    else:
        from wsss_bench.data import build_dataset

        if data_root is None:
            raise WsssBenchError("--dataset needs --data-root")
        truth = GroundTruth.from_dataset(build_dataset(dataset, data_root, split or "train"))
    with progress_bar("evaluating", len(truth.masks)) as update:
        if pred is not None:
            record, counts = eval_predictions(pred, truth, workers=workers, progress=update)
        else:
            record, counts = eval_cams(cams, truth, workers=workers, num_thresholds=thresholds,
                                       label_source=labels, native_threshold=native_threshold, progress=update)
    if name:
        record["name"] = name
    path = write_record(out, record, counts)
    console.print(per_class_table(record, title=record["name"]))
    for line in summary_lines(record):
        console.print(line)
    console.print(f"record: {path}")


def register(app: typer.Typer) -> None:
    app.command("eval", no_args_is_help=True)(eval_command)
