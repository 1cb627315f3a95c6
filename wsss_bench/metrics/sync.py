"""Evaluator state summed over ``torch.distributed`` ranks: one mechanism for the runners (torchrun)
and the Python API's streaming evaluators. Imports torch only when called, that is where a process
group is in use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def all_reduce_sum(t: Any, group: Any = None) -> Any:
    """Sum the int64 tensor ``t`` over the ranks of ``group``, in place, and return it. NCCL needs
    the tensor on the GPU and gloo is given it on the CPU; the sum lands back on ``t``'s device."""
    import torch
    import torch.distributed as dist

    nccl = dist.get_backend(group) == "nccl"
    if nccl and not t.is_cuda:
        work = t.to(torch.device("cuda", torch.cuda.current_device()))
    elif not nccl and t.is_cuda:
        work = t.cpu()
    else:
        work = t
    dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
    if work is not t:
        t.copy_(work.to(t.device))
    return t


def sync_evaluator_state(ev: Any, lists: Sequence[str], group: Any = None) -> None:
    """Sum ``ev.hist`` over the ranks and concatenate the per-image lists named ``lists`` in rank
    order, in place: afterwards every rank holds the state of all images (int64 sums: exact)."""
    import torch.distributed as dist

    all_reduce_sum(ev.hist, group)
    local = {k: getattr(ev, k) for k in lists}
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, local, group=group)
    for k in lists:
        setattr(ev, k, [item for part in gathered for item in part[k]])
