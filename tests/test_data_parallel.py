"""The process fan-out used by COCO mask building and dataset checks."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from wsss_bench.data.parallel import chunk_size, run_in_processes
from wsss_bench.errors import WsssBenchError

_OFFSET = 0


def _set_offset(offset: int) -> None:
    global _OFFSET
    _OFFSET = offset


def _square_plus_offset(x: int) -> int:
    return x * x + _OFFSET


def _mark_or_fail(item: tuple[str, int]) -> int:
    folder, i = item
    if i == 0:
        raise WsssBenchError(f"item {i} is bad", folder)
    time.sleep(0.02)
    (Path(folder) / f"{i}.done").write_text("")
    return i


def test_results_match_a_serial_loop_in_order_and_unordered():
    items = list(range(203))
    want = [x * x + 7 for x in items]
    got: list[int] = []
    run_in_processes(_square_plus_offset, items, 2, got.append, ordered=True, initializer=_set_offset,
                     initargs=(7,))
    assert got == want
    unordered: list[int] = []
    run_in_processes(_square_plus_offset, items, 3, unordered.append, initializer=_set_offset, initargs=(7,))
    assert sorted(unordered) == want
    assert not mp.active_children()


def test_chunks_are_small_enough_to_stop_early():
    assert chunk_size(10, 4) == 1
    assert chunk_size(160, 2) == 10
    assert chunk_size(100_000, 2) == 64


def test_a_failing_item_stops_the_pool_without_running_the_rest(tmp_path):
    items = [(str(tmp_path), i) for i in range(128)]  # chunks of 8, item 0 fails in the first
    with pytest.raises(WsssBenchError, match="item 0 is bad"):
        run_in_processes(_mark_or_fail, items, 2, lambda _: None)
    done = len(list(tmp_path.glob("*.done")))
    # only the chunks already running or queued when the error arrived finished; the rest were cancelled
    assert done < 64, done
    assert not mp.active_children()  # the workers were shut down, not left behind


def test_an_error_in_the_consumer_also_stops_the_pool(tmp_path):
    items = [(str(tmp_path), i) for i in range(1, 129)]

    def boom(_: int) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        run_in_processes(_mark_or_fail, items, 2, boom)
    assert len(list(tmp_path.glob("*.done"))) < 128
    assert not mp.active_children()
