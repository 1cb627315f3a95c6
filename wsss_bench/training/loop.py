"""``train_segmenter``: a segmenter trained on a folder of pseudo labels under a recipe, then scored.

The whole job, in order, with nothing written until every input has been checked:

1. the recipe (+ overrides), the training and ``val`` datasets, the pseudo labels' provenance;
2. the segmenter, built from the seed, its head initialised as the recipe says, the ImageNet initial
   weights loaded strictly onto its backbone (:mod:`wsss_bench.training.init`);
3. every pseudo label checked (each rank checks its share; the first problem is a one-line error);
4. the output folder: ``train-config.json`` records the run's identity; a rerun of the same
   command in the same folder resumes from ``checkpoints/last.pt``; a different run is refused;
5. training: under ``torchrun`` each rank is wrapped in DDP (NCCL on GPUs, gloo on CPU); the global
   batch is the recipe's whatever the number of ranks (per rank ``batch / world``, in micro-batches
   of ``micro_batch`` with gradient accumulation); samples, augmentation and dropout depend only on
   the seed, the iteration and the sample's place in the global batch; bf16/fp16 autocast (fp16 with
   a gradient scaler); a checkpoint (model, optimiser, scaler, RNG states, iteration, seconds) every
   ``checkpoint_every`` iterations, written atomically; one JSON line per iteration in
   ``train-log.jsonl``;
6. the final weights (``model.safetensors``, the segmenter's own layout, loadable by
   ``wsss-bench run --stage segmentation``), the loss curve (``loss.png``), and the segmenter scored on
   ``val`` by :func:`wsss_bench.segmenters.runner.run_segmentation` under the recipe's test-time
   protocol; rank 0 writes the record with its ``pipeline`` and ``training`` provenance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from wsss_bench.errors import CarryUserErrors, WsssBenchError, _CarriedError, raise_carried
from wsss_bench.inference import distributed as D
from wsss_bench.inference.device import autocast_context, resolve_device
from wsss_bench.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from wsss_bench.records import slug, write_record
from wsss_bench.training import data as TD
from wsss_bench.training.init import init_head, load_init
from wsss_bench.training.objective import BNStatSync, TrainObjective
from wsss_bench.training.recipes import HEAD_PREFIXES, Recipe, build_param_groups, load_recipe, lr_at

CONFIG_NAME = "train-config.json"
CHECKPOINT = "checkpoints/last.pt"
LOG_NAME = "train-log.jsonl"
PLOT_NAME = "loss.png"
MODEL_NAME = "model.safetensors"
CONFIG_FORMAT = "wsss-bench-training"

#: progress(done_iterations, total_iterations, loss, lr)
Progress = Callable[[int, int, float, float], None]


@dataclass
class TrainConfig:
    """Everything ``wsss-bench train-seg`` takes (CLI flags map onto these fields)."""

    pseudo_dir: str
    data_root: str
    out: str
    dataset: str = "synthetic"
    split: str = "train"
    val_split: str = "val"
    recipe: str = "tiny-synthetic"
    segmenter: str | None = None          # must agree with the recipe's when given
    init: str | None = None               # ImageNet weights (torchvision/timm layout), local path
    pseudo_record: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 2
    name: str | None = None
    settings: str | None = None           # test-time protocol (default: the recipe's)
    iterations: int | None = None         # recipe overrides (recorded as such)
    micro_batch: int | None = None
    checkpoint_every: int | None = None
    eval_batch_size: int = 1
    val_limit: int | None = None
    fresh: bool = False
    dataset_options: dict[str, Any] = field(default_factory=dict)
    record_dir: str | None = None         # where the record goes (default: ``out``), e.g. a suite's records


@dataclass
class TrainResult:
    record: dict[str, Any] | None
    record_path: Path | None
    counts: dict[str, np.ndarray] | None
    out: Path
    log_path: Path
    plot_path: Path
    model_path: Path
    resumed_from: int | None


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def micro_seed(seed: int, iteration: int, micro_index: int) -> int:
    """Seed of the torch generator for one micro-batch (dropout), independent of the rank layout."""
    return int(np.random.SeedSequence([int(seed), int(iteration), int(micro_index), 0xD0]).generate_state(1)[0])


def _collate(items: list[Any]) -> Any:
    for item in items:
        if isinstance(item, _CarriedError):
            return item
    xs, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.stack(ys)


def _gather_first_error(err: tuple[str, str | None] | None, info: D.DistInfo) -> tuple[str, str | None] | None:
    if not info.active:
        return err
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, err)
    return next((e for e in everyone if e is not None), None)


def _raise_everywhere(fn: Callable[[], Any], info: D.DistInfo) -> Any:
    """Run ``fn`` on every rank; if any rank raised a user error, raise the first one on every rank."""
    err: tuple[str, str | None] | None = None
    result = None
    try:
        result = fn()
    except WsssBenchError as e:
        err = (e.message, e.path)
    first = _gather_first_error(err, info)
    if first is not None:
        raise WsssBenchError(*first)
    return result


def read_log(path: Path, upto: int | None = None) -> list[dict[str, Any]]:
    """Entries of a training log (a torn last line, as a kill leaves it, is skipped), up to ``upto``."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("iteration"), int):
            if upto is None or entry["iteration"] <= upto:
                out.append(entry)
    return out


def plot_loss(log: list[dict[str, Any]], path: Path, title: str, window: int = 20) -> None:
    """Loss per iteration and its moving average (the reference logs a 20-iteration average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = np.asarray([e["iteration"] for e in log], dtype=np.int64)
    loss = np.asarray([e["loss"] for e in log], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if its.size:
        ax.plot(its, loss, lw=0.6, alpha=0.45, color="tab:blue", label="loss")
        if its.size >= window:
            avg = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(its[window - 1:], avg, lw=1.6, color="tab:blue", label=f"moving average ({window})")
        ax2 = ax.twinx()
        ax2.plot(its, [e["lr"] for e in log], lw=1.0, color="tab:orange", label="learning rate")
        ax2.set_ylabel("learning rate (base group)", color="tab:orange")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    recipe = load_recipe(cfg.recipe)
    if cfg.segmenter is not None and cfg.segmenter != recipe.segmenter:
        raise WsssBenchError(f"recipe {recipe.name!r} trains segmenter {recipe.segmenter!r}, not {cfg.segmenter!r}",
                             recipe.path)
    return recipe.with_overrides(iterations=cfg.iterations, micro_batch=cfg.micro_batch,
                                 checkpoint_every=cfg.checkpoint_every)


def _identity(cfg: TrainConfig, recipe: Recipe, seg: Any, init: dict[str, Any] | None, src: TD.PseudoSource,
              pseudo_sha: str, num_ids: int) -> dict[str, Any]:
    """What must be equal for a rerun to resume (the number of ranks may change)."""
    rec = recipe.to_dict()
    rec.pop("path", None)
    return {
        "recipe": rec, "segmenter": seg.name, "backbone": seg.backbone, "hyperparameters": dict(seg.hparams),
        "dataset": cfg.dataset, "split": cfg.split, "data_root": os.path.abspath(cfg.data_root),
        "dataset_options": dict(cfg.dataset_options), "num_train_images": num_ids,
        "pseudo_dir": os.path.abspath(cfg.pseudo_dir), "pseudo_labels_sha256": pseudo_sha,
        "pseudo_fingerprint": src.fingerprint, "seed": int(cfg.seed), "precision": cfg.precision,
        "init_sha256": None if init is None else init["sha256"],
    }


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------


def train_segmenter(cfg: TrainConfig, progress: Progress | None = None,
                    log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the recipe's segmenter on ``cfg.pseudo_dir`` and score it on ``cfg.val_split``.

    Returns the record (rank 0; other ranks get ``record=None``). See the module docstring.
    """
    say = log or (lambda msg: None)
    if cfg.workers < 0:
        raise WsssBenchError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.eval_batch_size < 1:
        raise WsssBenchError(f"--eval-batch-size must be >= 1, got {cfg.eval_batch_size}")
    recipe = resolve_recipe(cfg)
    dev = resolve_device(cfg.device)
    autocast_context(dev, cfg.precision)  # validates the precision first
    dev, info = D.setup_device(dev)
    try:
        return _train(cfg, recipe, dev, info, progress, say)
    finally:
        D.teardown(info)


def _train(cfg: TrainConfig, recipe: Recipe, dev: torch.device, info: D.DistInfo, progress: Progress | None,
           say: Callable[[str], None]) -> TrainResult:
    from wsss_bench.data import build_dataset
    from wsss_bench.segmenters.registry import create_segmenter

    world = info.world_size
    if recipe.batch % world:
        raise WsssBenchError(f"the global batch {recipe.batch} of recipe {recipe.name!r} does not divide among "
                             f"{world} ranks")
    per_rank = recipe.batch // world
    if per_rank % recipe.micro_batch:
        raise WsssBenchError(f"{world} ranks get {per_rank} samples each per iteration, not a multiple of the "
                             f"micro-batch {recipe.micro_batch} (pass --micro-batch, a divisor of {per_rank})")
    accum = per_rank // recipe.micro_batch

    # 1. inputs ------------------------------------------------------------------------------------
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, **cfg.dataset_options)
    val = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, **cfg.dataset_options)
    if not val.has_masks():
        raise WsssBenchError(f"split {cfg.val_split!r} has no ground truth to score the segmenter on", val.root)
    if recipe.datasets and ds.name not in recipe.datasets:
        say(f"warning: recipe {recipe.name} is declared for {', '.join(recipe.datasets)}, not {ds.name}")
    src = TD.read_pseudo_source(cfg.pseudo_dir, cfg.pseudo_record)
    if src.dataset is not None and src.dataset != ds.name:
        raise WsssBenchError(f"the pseudo labels were made on {src.dataset}, not {ds.name}",
                             src.provenance_file or cfg.pseudo_dir)

    # 2. the segmenter ------------------------------------------------------------------------------
    torch.manual_seed(int(cfg.seed))
    seg = create_segmenter(recipe.segmenter, ds.classes.num_classes, backbone=recipe.backbone, hparams=recipe.hparams)
    heads = HEAD_PREFIXES[seg.name]
    init_head(seg.model, heads, recipe.head_init)
    init = None
    if cfg.init is not None:
        init = load_init(seg, cfg.init)
    elif recipe.init_file is not None:  # the recipe's packaged initial weights
        from wsss_bench.training.backbone import packaged_init

        init = load_init(seg, str(packaged_init(recipe.init_file)))
    elif recipe.init == "required":
        raise WsssBenchError(f"recipe {recipe.name!r} starts from ImageNet weights: give --init FILE (a "
                             f"torchvision or timm {seg.backbone} state dict; nothing is downloaded)")

    # 3. every pseudo label --------------------------------------------------------------------------
    say(f"checking {len(ds.ids)} pseudo labels in {cfg.pseudo_dir}")
    my_ids = D.shard(list(ds.ids), info)

    def check() -> list[tuple[str, str]]:
        TD.validate_pseudo_labels(ds, cfg.pseudo_dir, my_ids, workers=cfg.workers)
        return [(i, sha256_file(TD.pseudo_path(Path(cfg.pseudo_dir), i))) for i in my_ids]

    digests = _raise_everywhere(check, info)
    if info.active:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, digests)
        digests = [d for part in parts for d in part]
    h = hashlib.sha256()
    for image_id, digest in sorted(digests):
        h.update(f"{image_id}\t{digest}\n".encode())
    pseudo_sha = h.hexdigest()

    # 4. the output folder --------------------------------------------------------------------------
    out = Path(cfg.out)
    identity = _identity(cfg, recipe, seg, init, src, pseudo_sha, len(ds.ids))
    ident_sha = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    ckpt_path, log_path, plot_path, model_path = out / CHECKPOINT, out / LOG_NAME, out / PLOT_NAME, out / MODEL_NAME

    def decide() -> bool:
        cfg_file = out / CONFIG_NAME
        if out.exists() and not out.is_dir():
            raise WsssBenchError("output path exists and is not a folder", out)
        if cfg.fresh or not cfg_file.is_file():
            return False
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WsssBenchError(f"unreadable training configuration ({e}); use --fresh to start over", cfg_file) from None
        if not isinstance(old, dict) or old.get("format") != CONFIG_FORMAT:
            raise WsssBenchError("not a wsss-bench training configuration; use another --out", cfg_file)
        changed = _diff(old.get("identity"), json.loads(json.dumps(identity, default=str)))
        if changed:
            raise WsssBenchError(f"this folder holds a different training run (differs in {', '.join(changed[:6])}); "
                                 "use another --out, or --fresh to discard it", cfg_file)
        return ckpt_path.is_file()

    resume = _raise_everywhere(decide, info)
    D.barrier(info)
    if info.is_main:
        if cfg.fresh:
            for p in (ckpt_path.parent, log_path, plot_path, model_path, out / CONFIG_NAME):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_NAME, {"format": CONFIG_FORMAT, "version": 1, "identity_sha256": ident_sha,
                                              "identity": json.loads(json.dumps(identity, default=str))})
    D.barrier(info)

    # 5. training ------------------------------------------------------------------------------------
    net = seg.model.to(dev)
    if recipe.backbone_bn_momentum is not None:
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not (name + ".").startswith(heads):
                m.momentum = recipe.backbone_bn_momentum
    groups, frozen = build_param_groups(net, recipe, heads)
    opt = make_optimizer([{k: v for k, v in g.items() if k != "names"} for g in groups], recipe)
    scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "fp16" else None
    start, seconds_before, resumed_from = 0, 0.0, None
    history: list[int] = []
    if resume:
        state = _load_checkpoint(ckpt_path, ident_sha)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start, seconds_before = int(state["iteration"]), float(state["seconds"])
        history = [int(v) for v in state.get("resumed_from", [])] + [start]
        resumed_from = start
        say(f"resuming from iteration {start} ({ckpt_path})")
    if info.is_main:  # keep the log lines of the iterations the checkpoint holds; drop the rest
        entries = read_log(log_path, upto=start)
        atomic_write_text(log_path, "".join(json.dumps(e) + "\n" for e in entries))

    objective = TrainObjective(net, recipe.loss, recipe.msc_scales).to(dev)
    model: torch.nn.Module = objective
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(objective, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    bn_sync = BNStatSync(net) if recipe.bn == "train" else None

    def set_mode() -> None:
        objective.train()
        if recipe.bn == "frozen":
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    trainset = TD.PseudoLabelTrainSet(
        ds, cfg.pseudo_dir, TD.AugmentSpec(recipe.crop, recipe.scales, recipe.scale_sampling, recipe.flip, recipe.pad),
        cfg.seed, recipe.batch, seg.mean, seg.std, seg.channel_order)
    sampler = TD.RankSampler(start, recipe.iterations, recipe.batch, info.rank, world)
    loader = DataLoader(CarryUserErrors(trainset), batch_size=recipe.micro_batch, sampler=sampler,
                        num_workers=cfg.workers, collate_fn=_collate, pin_memory=dev.type == "cuda",
                        prefetch_factor=4 if cfg.workers else None, persistent_workers=False)
    batches: Iterator[Any] = raise_carried(loader)
    every = recipe.checkpoint_every
    t0 = time.perf_counter()
    log_file = open(log_path, "a", encoding="utf-8") if info.is_main else None  # noqa: SIM115
    last_loss = float("nan")
    try:
        set_mode()
        for it in range(start, recipe.iterations):
            loss_sum = train_step(model, opt, recipe, it, (next(batches) for _ in range(accum)), accum=accum,
                                  seed=cfg.seed, rank=info.rank, world=world, device=dev, precision=cfg.precision,
                                  scaler=scaler, bn_sync=bn_sync)
            last_loss = float(loss_sum.item()) / (world * accum)
            if not np.isfinite(last_loss) and scaler is None:
                raise WsssBenchError(f"training diverged: the loss is {last_loss} at iteration {it + 1}")
            done = it + 1
            seconds = seconds_before + time.perf_counter() - t0
            lr0 = opt.param_groups[0]["lr"]
            if log_file is not None:
                log_file.write(json.dumps({"iteration": done, "loss": last_loss, "lr": lr0,
                                           "lrs": [g["lr"] for g in opt.param_groups],
                                           "seconds": round(seconds, 3), "world_size": world}) + "\n")
                log_file.flush()
            if progress is not None and info.is_main:
                progress(done, recipe.iterations, last_loss, lr0)
            if done % every == 0 or done == recipe.iterations:
                if info.is_main:
                    _save_checkpoint(ckpt_path, net, opt, scaler, done, seconds, ident_sha, history)
    finally:
        if log_file is not None:
            log_file.close()
        if bn_sync is not None:
            bn_sync.close()
    this_run = time.perf_counter() - t0
    ran = recipe.iterations - start
    train_seconds = seconds_before + (this_run if ran > 0 else 0.0)
    train_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    # 6. weights, plot, evaluation, record --------------------------------------------------------------
    net.eval()
    entries = read_log(log_path) if info.is_main else []
    if info.is_main:
        from safetensors.torch import save_file

        with atomic_path(model_path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
        plot_loss(entries, plot_path, f"{cfg.name or slug(Path(cfg.pseudo_dir).name)}: {recipe.name} v{recipe.version}")
    D.barrier(info)
    model_sha = sha256_file(model_path)
    settings = cfg.settings or recipe.test_settings
    say(f"scoring on {cfg.val_split} ({settings} test-time protocol)")
    from wsss_bench.segmenters.runner import run_segmentation

    name = cfg.name or slug(f"{src.record or Path(cfg.pseudo_dir).name}-{recipe.name}")
    record, counts = run_segmentation(
        seg, val, settings, device=str(dev), precision=cfg.precision, batch_size=cfg.eval_batch_size,
        workers=cfg.workers, limit=cfg.val_limit, name=name, checkpoint=str(model_path.resolve()),
        checkpoint_sha256=model_sha)
    result = TrainResult(None, None, None, out, log_path, plot_path, model_path, resumed_from)
    if record is None or counts is None:
        return result
    record["pipeline"] = {
        "method": src.method, "pseudo_record": src.record, "pseudo_fingerprint": src.fingerprint,
        "pseudo_miou": src.miou, "threshold": src.threshold, "recipe": recipe.name,
        "recipe_version": recipe.version, "segmenter": seg.name,
        "threshold_rule": src.threshold_rule, "pseudo_labels_miou": src.labels_miou,
        "pseudo_dir": os.path.abspath(cfg.pseudo_dir), "pseudo_labels_sha256": pseudo_sha,
        "pseudo_provenance": src.provenance_file, "pseudo_dataset": src.dataset, "pseudo_split": src.split,
    }
    record["training"] = {
        "log": str(log_path.resolve()), "loss_plot": str(plot_path.resolve()), "iterations": recipe.iterations,
        "seconds": round(train_seconds, 3), "init_sha256": None if init is None else init["sha256"],
        "world_size": world, "global_batch": recipe.batch, "precision": cfg.precision,
        "init": None if init is None else os.path.abspath(init["path"]),
        "init_layout": None if init is None else init["layout"], "seed": int(cfg.seed),
        "micro_batch": recipe.micro_batch, "accumulation": accum, "bn": recipe.bn,
        "recipe_sha256": recipe.sha256, "recipe_file": recipe.path, "recipe_overrides": dict(recipe.overrides),
        "recipe_source": dict(recipe.source), "split": cfg.split, "num_train_images": len(ds.ids),
        "final_loss": entries[-1]["loss"] if entries else last_loss, "resumed_from": history,
        "model": str(model_path.resolve()), "frozen_parameters": len(frozen),
        "images_per_second": round(recipe.batch * ran / this_run, 3) if ran > 0 and this_run > 0 else None,
        "peak_device_memory_mb": None if train_peak is None else round(train_peak, 1),
        "checkpoint_every": recipe.checkpoint_every, "identity_sha256": ident_sha,
    }
    path = write_record(cfg.record_dir or out, record, counts, stem=name)
    say(f"record: {path}")
    return dataclasses.replace(result, record=record, record_path=path, counts=counts)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, recipe: Recipe, iteration: int,
               micro_batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, accum: int, seed: int, rank: int,
               world: int, device: torch.device, precision: str, scaler: Any = None,
               bn_sync: BNStatSync | None = None) -> torch.Tensor:
    """One optimiser step over this rank's ``accum`` micro-batches; returns the sum of their losses
    over all ranks (float64, on the reducing device). ``model`` is the :class:`TrainObjective`, in DDP
    when ``world > 1``; the learning rates are set for (0-based) ``iteration`` first."""
    distributed = world > 1
    for g in opt.param_groups:
        g["lr"] = lr_at(g["initial_lr"], iteration, recipe)
    opt.zero_grad(set_to_none=True)
    if bn_sync is not None:
        bn_sync.begin_step()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for a, (x, y) in enumerate(micro_batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        index = rank * accum + a
        torch.manual_seed(micro_seed(seed, iteration, index))  # dropout: the same whatever the ranks
        if bn_sync is not None:
            bn_sync.begin_micro(index)
        sync = model.no_sync() if distributed and a < accum - 1 else contextlib.nullcontext()
        with sync:
            with autocast_context(device, precision):
                loss = model(x, y)
            scaled = loss.float() / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach().double()
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    if bn_sync is not None:
        bn_sync.end_step(world * accum, distributed)
    if distributed:
        t = loss_sum.cpu() if dist.get_backend() != "nccl" else loss_sum
        dist.all_reduce(t)
        loss_sum = t
    return loss_sum


def make_optimizer(groups: list[dict[str, Any]], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.nesterov)


def _save_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, iteration: int,
                     seconds: float, ident_sha: str, history: list[int]) -> None:
    state = {
        "format": CONFIG_FORMAT, "identity_sha256": ident_sha, "iteration": int(iteration), "seconds": float(seconds),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []},
        "schedule": {"type": "poly", "iteration": int(iteration)}, "resumed_from": list(history),
    }
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def _load_checkpoint(path: Path, ident_sha: str) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated files raise several types
        raise WsssBenchError(f"cannot read the training checkpoint ({type(e).__name__}: {e}); use --fresh to "
                             "start over", path) from None
    if not isinstance(state, dict) or state.get("format") != CONFIG_FORMAT:
        raise WsssBenchError("not a wsss-bench training checkpoint; use --fresh to start over", path)
    if state.get("identity_sha256") != ident_sha:
        raise WsssBenchError("the checkpoint belongs to another training configuration; use --fresh", path)
    return state
