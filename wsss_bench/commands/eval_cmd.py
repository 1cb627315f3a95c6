"""``wsss-bench eval``: score a folder of predicted masks or localisation maps."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import typer

from wsss_bench.commands._options import (
    MAX_THRESHOLDS,
    LabelSource,
    Normalize,
    OfficialScript,
    Unlabelled,
    value_of,
)
from wsss_bench.errors import WsssBenchError


def check_output_folder(out: Path) -> None:
    """Refuse an output location that cannot hold files, before any work (nothing is created)."""
    p = Path(out)
    if p.exists():
        if not p.is_dir():
            raise WsssBenchError("--out names a file, not a folder", p)
        if not os.access(p, os.W_OK | os.X_OK):
            raise WsssBenchError("--out folder is not writable", p)
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WsssBenchError("--out lies under a file, not a folder", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WsssBenchError("cannot create the --out folder here (not writable)", parent)


class _LazyProgress:
    """Starts the progress bar at the first update, after the worker processes have started."""

    def __init__(self, description: str):
        self.description = description
        self.stack = contextlib.ExitStack()
        self.update: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.update is None:
            from wsss_bench.commands._ui import progress_bar

            self.update = self.stack.enter_context(progress_bar(self.description, total))
        self.update(done, total)

    def __enter__(self) -> _LazyProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def eval_command(
    pred: Path = typer.Option(None, "--pred", help="Folder of predicted masks, one <id>.png per image "
                              "(class-index values, palette or greyscale)."),
    cams: Path = typer.Option(None, "--cams", help="Folder of localisation maps: IRN-style <id>.npy dicts "
                              "(keys, high_res|cam; torch tensors allowed), EDAM-style <id>.npy {class: map}, "
                              "wsss-bench <id>.npz (classes, scores), or greyscale class PNGs <id>_<c>.png "
                              "(c the 1-based class; 8-bit /255 or 16-bit /65535)."),
    gt: Path = typer.Option(None, "--gt", help="Folder of ground-truth masks <id>.png (with --classes; only the "
                            "ids of --ids or of --dataset/--split when given)."),
    classes: str = typer.Option("voc", "--classes", help="Label space for --gt: voc, coco, synthetic or a "
                                "class count (background included)."),
    ids: Path = typer.Option(None, "--ids", help="Split list file (one id a line, e.g. VOC's "
                             "ImageSets/Segmentation/val.txt): score only these ids of --gt; the record's "
                             "split is the file's stem unless --split names it."),
    dataset: str = typer.Option(None, "--dataset", help="Read ground truth (or, with --gt, the split's ids) "
                                "from a dataset: voc, coco, synthetic."),
    data_root: Path = typer.Option(None, "--data-root", help="Dataset root (with --dataset)."),
    split: str = typer.Option(None, "--split", help="Split (with --dataset; default train) or the record's "
                              "split name."),
    out: Path = typer.Option(Path("wsss-bench-eval"), "--out", help="Folder for the record and per-image counts."),
    name: str = typer.Option(None, "--name", help="Record name (default: eval-<folder>)."),
    labels: LabelSource = typer.Option(None, "--labels", help="Image label set for maps: gt (from the mask, "
                                       "the default) or maps (the classes each map file lists)."),
    num_thresholds: int = typer.Option(None, "--num-thresholds", min=1, max=MAX_THRESHOLDS, metavar="T",
                                       help="Number of sweep thresholds T: j/T for j = 0..T-1 (default 100)."),
    thresholds_alias: int = typer.Option(None, "--thresholds", hidden=True,
                                         help="Deprecated spelling of --num-thresholds."),
    native: str = typer.Option(None, "--native", help="The method's own rule, evaluated exactly: a threshold "
                               "(0.15, or constant:0.15) or power:ALPHA (foreground where m > (1-m)^ALPHA)."),
    native_threshold: float = typer.Option(None, "--native-threshold", help="Same as --native with a constant "
                                           "threshold (e.g. 0.15 for IRN)."),
    official: OfficialScript = typer.Option(None, "--official", help="Also give the number this official "
                                            "script prints for the same maps: irn (eval_cam.py), edam (eval.py) "
                                            "or toco (MoRe/ToCo scores); under --native, default its own threshold."),
    normalize: Normalize = typer.Option(None, "--normalize", help="Rescale each map into [0, 1]: max (negatives "
                                        "to 0, divide by the maximum) or minmax. Without it, maps outside [0, 1] "
                                        "are refused."),
    unlabelled: Unlabelled = typer.Option(None, "--unlabelled", help="With --pred: accept 255 as 'no label' "
                                          "(fn: still a false negative of its gt class; exclude: not counted, "
                                          "as MoRe's pseudo_scores) and report coverage."),
    workers: int = typer.Option(None, "--workers", min=0, help="Reader processes (default: one per idle core "
                                "this process may use, none when fewer than two are idle; 0 reads in this "
                                "process)."),
) -> None:
    """Score what any code base produced, without a method adapter.

    Example: [bold]wsss-bench eval --cams irn/result/cam --dataset voc --data-root VOC2012 --split train
    --native 0.15 --official irn --out records/[/bold]
    """
    from wsss_bench.metrics.rules import NativeRule, check_num_thresholds

    if thresholds_alias is not None:
        if num_thresholds is not None:
            raise WsssBenchError("give --num-thresholds once (--thresholds is its deprecated spelling)")
        if not 1 <= thresholds_alias <= MAX_THRESHOLDS:
            raise WsssBenchError(f"--num-thresholds must be in 1..{MAX_THRESHOLDS}, got {thresholds_alias}")
        from wsss_bench.commands._ui import err_console

        err_console.print("warning: --thresholds is deprecated; use --num-thresholds", markup=False)
        num_thresholds = thresholds_alias
    # -- every option checked before any work starts
    if (pred is None) == (cams is None):
        raise WsssBenchError("give exactly one of --pred DIR or --cams DIR")
    if gt is None and dataset is None:
        raise WsssBenchError("give the ground truth as --gt DIR (with --classes) or --dataset with --data-root")
    if dataset is not None and data_root is None:
        raise WsssBenchError("--dataset needs --data-root")
    if ids is not None and dataset is not None:
        raise WsssBenchError("give the split's ids as --ids FILE or --dataset/--split, not both")
    if ids is not None and gt is None:
        raise WsssBenchError("--ids selects masks of --gt DIR; give --gt")
    if pred is not None:
        for opt, val in (("--labels", labels), ("--num-thresholds", num_thresholds), ("--native", native),
                         ("--native-threshold", native_threshold), ("--official", official),
                         ("--normalize", normalize)):
            if val is not None:
                raise WsssBenchError(f"{opt} applies to --cams (maps), not to --pred")
    if cams is not None and unlabelled is not None:
        raise WsssBenchError("--unlabelled applies to --pred (hard masks), not to --cams")
    if native is not None and native_threshold is not None:
        raise WsssBenchError("give --native or --native-threshold, not both")
    T = check_num_thresholds(100 if num_thresholds is None else num_thresholds)
    rule = NativeRule.parse(native if native is not None else native_threshold)
    folder = pred if pred is not None else cams
    if not folder.is_dir():
        raise WsssBenchError("folder not found", folder)
    if gt is not None and not gt.is_dir():
        raise WsssBenchError("ground-truth folder not found", gt)
    if ids is not None and not ids.is_file():
        raise WsssBenchError("id list file not found", ids)
    if data_root is not None and not data_root.is_dir():
        raise WsssBenchError("dataset root not found", data_root)
    check_output_folder(out)

    from wsss_bench.api import ground_truth

    truth = ground_truth(gt, dataset=dataset, data_root=data_root, split=split, classes=classes, ids=ids)

    from wsss_bench.commands._ui import console, per_class_table, summary_lines
    from wsss_bench.evaluate import eval_cams, eval_predictions, tune_malloc
    from wsss_bench.records import write_record

    tune_malloc()  # this process only evaluates (see wsss_bench.evaluate.tune_malloc)

    with _LazyProgress("evaluating") as update:
        if pred is not None:
            record, counts = eval_predictions(pred, truth, workers=workers, progress=update,
                                              unlabelled=value_of(unlabelled), name=name)
        else:
            record, counts = eval_cams(cams, truth, workers=workers, num_thresholds=T,
                                       label_source="gt" if labels is None else value_of(labels), native=rule,
                                       official=value_of(official),
                                       normalize=value_of(normalize),
                                       progress=update, name=name)
    path = write_record(out, record, counts)
    console.print(per_class_table(record, title=record["name"]))
    for line in summary_lines(record):
        console.print(line)
    for line in extra_lines(record):
        console.print(line)
    console.print(f"record: {path}")


def extra_lines(record: dict[str, Any]) -> list[str]:
    """Lines for what ``summary_lines`` does not show: the official number, the coverage."""
    lines = []
    m = record.get("metrics") or {}
    if m.get("coverage") is not None:
        lines.append(f"coverage {100 * m['coverage']:.2f} % labelled ({m['unlabelled_pixels']} unlabelled pixels "
                     f"{'counted as false negatives' if m['unlabelled'] == 'fn' else 'left out'})")
    off = record.get("official")
    if off:
        ours = (record.get("native") or {}).get("miou")
        v = "-" if off["miou"] is None else f"{100 * off['miou']:.2f}"
        o = "-" if ours is None else f"{100 * ours:.2f}"
        lines.append(f"official {off['script']} ({off['source']}), labels from {off['label_set']}, threshold "
                     f"{off['threshold']:g}: mIoU {v}  |  protocol at the same rule: {o}")
    return lines


def register(app: typer.Typer) -> None:
    app.command("eval", no_args_is_help=True)(eval_command)
