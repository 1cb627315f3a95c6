"""Fan-out of per-image work to worker processes (COCO mask building, dataset checks).

Built on :class:`concurrent.futures.ProcessPoolExecutor` rather than ``multiprocessing.Pool``:
when an image fails, ``Pool``'s context manager calls ``terminate()``, which kills workers with
SIGTERM, and a worker killed while it holds the result queue's lock leaves the pool's task-handler
thread waiting on that lock forever (seen in a `.ci/run` test run: ``prepare_coco_masks`` hung in
``Pool._terminate_pool`` after a bad annotation). Here an error cancels the chunks not yet started,
lets the running ones finish (a chunk is at most 64 items) and stops the workers with their normal
shutdown, so nothing is killed in the middle of a write.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _run_chunk(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    return [fn(item) for item in items]


def chunk_size(num_items: int, workers: int) -> int:
    """About 8 chunks per worker, at most 64 items each (small enough for a prompt error and a
    smooth progress bar, large enough to amortise the pickling)."""
    return max(1, min(64, num_items // (workers * 8) or 1))


def run_in_processes(fn: Callable[[T], R], items: Sequence[T], workers: int, on_result: Callable[[R], Any],
                     *, ordered: bool = False, initializer: Callable[..., Any] | None = None,
                     initargs: tuple = ()) -> None:
    """Call ``on_result(fn(item))`` for every item, ``fn`` running in ``workers`` processes (fork on
    POSIX, spawn elsewhere; ``fn`` and ``initializer`` must be module-level functions).

    ``ordered``: results arrive in the order of ``items``; otherwise chunk by chunk as they finish.
    The first exception, raised by ``fn`` in a worker or by ``on_result`` here, propagates after
    the pending chunks are cancelled and the workers have stopped.
    """
    items = list(items)
    size = chunk_size(len(items), workers)
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    try:
        futures = [pool.submit(_run_chunk, fn, items[i:i + size]) for i in range(0, len(items), size)]
        for fut in futures if ordered else as_completed(futures):
            for result in fut.result():
                on_result(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
