"""The one exception type for user errors.

The CLI turns a :class:`WsssBenchError` into a one-line message on stderr and exit code 2;
the traceback is shown only with ``--debug``. Raise it for anything a user can fix: a missing or
corrupt file, a wrong shape, an unknown class or method, a checkpoint that does not match.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class WsssBenchError(Exception):
    """A user-facing error. ``path`` (when given) is prefixed to the message."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class _CarriedError:
    """A :class:`WsssBenchError` caught in a worker process, sent back as a plain value."""

    __slots__ = ("message", "path")

    def __init__(self, message: str, path: str | None):
        self.message, self.path = message, path

    def __reduce__(self) -> tuple:
        return (_CarriedError, (self.message, self.path))


class CarryUserErrors:
    """Wrap a map-style dataset for a ``DataLoader`` with worker processes.

    PyTorch re-raises an exception from a worker as a new exception whose message is the worker's
    whole traceback, which would turn a one-line user error into thirty lines. Wrapped, a
    :class:`WsssBenchError` travels back as a value and :func:`raise_carried` raises it again, in
    the main process, with its original one-line message and path.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except WsssBenchError as e:
            from torch.utils.data import get_worker_info

            if get_worker_info() is None:  # in the main process: keep the traceback for --debug
                raise
            return _CarriedError(e.message, e.path)


def raise_carried(items: Iterable[T]) -> Iterator[T]:
    """Pass items through; raise the :class:`WsssBenchError` a :class:`CarryUserErrors` carried."""
    for item in items:
        if isinstance(item, _CarriedError):
            raise WsssBenchError(item.message, item.path)
        yield item
