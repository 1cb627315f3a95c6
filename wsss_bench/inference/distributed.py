"""Distributed runs with ``torchrun``: shard the image list by rank, sum evaluator states.

``torchrun --nproc-per-node N -m wsss_bench run ...`` sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``;
:func:`setup` then initialises the process group (NCCL on CUDA, gloo on CPU). Without those
variables everything runs single-process and these helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from wsss_bench.errors import WsssBenchError

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def _peer_failures() -> Iterator[None]:
    """A collective that fails because another rank stopped (its process exited with its own one-line
    error, and gloo/NCCL report a closed connection) becomes one line here too, not a traceback."""
    try:
        yield
    except WsssBenchError:
        raise
    except (RuntimeError, ValueError, OSError) as e:  # DistBackendError and friends are RuntimeErrors
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else "?"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise WsssBenchError(f"rank {rank}: another rank stopped, so this one stops too (the first error "
                             f"is printed by that rank; here: {first})") from None


def collective(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _peer_failures():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment, if any."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def setup_device(device: torch.device) -> tuple[torch.device, DistInfo]:
    """Join the process group (if any) and pin this rank's CUDA device (``cuda`` -> ``cuda:LOCAL_RANK``
    under torchrun); resets the peak-memory counter the run's timings report."""
    info = setup(str(device))
    if device.type == "cuda" and info.active and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return device, info


def teardown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def shard(ids: list[str], info: DistInfo) -> list[str]:
    """This rank's share of the image list (strided, so shards differ by at most one image)."""
    return ids[info.rank::info.world_size] if info.active else list(ids)


@collective
def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


@collective
def sync_evaluator(ev: Any, info: DistInfo) -> None:
    """Sum an evaluator's counts over ranks and gather its per-image state, in place (its
    ``all_reduce``): after the call every rank holds the state of the whole split."""
    if info.active:
        ev.all_reduce()


@collective
def all_sum_int(value: int, info: DistInfo) -> int:
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


@collective
def all_max_float(value: float, info: DistInfo) -> float:
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
