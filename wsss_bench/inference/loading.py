"""Reading a split for a run: samples, their Pillow-rescaled views and cached maps, in loader workers.

Each item is an :class:`Item`: the sample, the uint8 views of every scale when the settings rescale
with Pillow (made here, in the workers, so the exact Pillow arithmetic costs the main process
nothing), and the cached maps when the map cache has a valid entry. Items that need the model are
grouped by image size into batches; cached ones pass alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from wsss_bench.errors import CarryUserErrors, raise_carried
from wsss_bench.inference.cache import read_entry
from wsss_bench.inference.tta import PreparedImages, prepare_images
from wsss_bench.methods.base import InferenceSettings


@dataclass
class Item:
    sample: Any
    prepared: PreparedImages
    cached: np.ndarray | None
    status: str  # "off", "hit", "miss" or "corrupt: <reason>"


class Items(Dataset):
    """Yields an :class:`Item` per image index (runs in DataLoader workers)."""

    def __init__(self, ds: Any, indices: list[int], settings: InferenceSettings, cache: Path | None,
                 cache_dtype: str = "float32"):
        self.ds, self.indices, self.settings = ds, indices, settings
        self.cache, self.cache_dtype = cache, cache_dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        s = self.ds[self.indices[i]]
        if self.cache is not None:
            maps, status = read_entry(self.cache, s.id, s.labels, s.image.shape[:2], self.cache_dtype)
            if maps is not None:
                return Item(s, None, maps, status)
        else:
            status = "off"
        return Item(s, prepare_images(s.image, self.settings), None, status)


def iterate(items: Items, workers: int) -> Iterator[Item]:
    loader = DataLoader(CarryUserErrors(items), batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=lambda x: x, persistent_workers=False, prefetch_factor=4 if workers else None)
    return raise_carried(loader)


def batches(stream: Iterator[Item], batch_size: int) -> Iterator[list[Item]]:
    """Group items needing the model by image size into batches; cached items pass alone."""
    pending: dict[tuple[int, int], list[Item]] = {}
    for item in stream:
        if item.cached is not None or batch_size <= 1:
            yield [item]
            continue
        key = item.sample.image.shape[:2]
        pending.setdefault(key, []).append(item)
        if len(pending[key]) >= batch_size:
            yield pending.pop(key)
    yield from pending.values()
