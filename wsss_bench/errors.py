"""The one exception type for user errors.

The CLI turns a :class:`WsssBenchError` into a one-line message on stderr and exit code 2;
the traceback is shown only with ``--debug``. Raise it for anything a user can fix: a missing or
corrupt file, a wrong shape, an unknown class or method, a checkpoint that does not match.
"""

from __future__ import annotations

import os


class WsssBenchError(Exception):
    """A user-facing error. ``path`` (when given) is prefixed to the message."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
