"""Split list files and image ids: reading, validation, and the protocol's split sizes.

An image id is a plain file-name stem (``2007_000032``, ``COCO_val2014_000000000042``). A list
entry that is empty, absolute, contains a path separator or ``..`` would let a split name a file
outside the dataset root; it is rejected with the list file and the line number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsss_bench.errors import WsssBenchError

#: Split sizes defined by PROTOCOL.md; ``datasets check`` warns (never fails) on a mismatch.
PROTOCOL_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "voc": {"train": 1464, "val": 1449, "trainval": 2913, "test": 1456, "train_aug": 10582},
    "coco": {"train": 82081, "val": 40137},
}

#: Called with (path, message, severity) for a bad entry when the caller collects problems
#: instead of failing; severity is ``"error"`` or ``"warning"``.
OnBadEntry = Callable[[Path, str, str], None]


def id_problem(entry: str) -> str | None:
    """Why ``entry`` is not an acceptable image id, or ``None`` when it is."""
    if not entry:
        return "empty image id"
    if "\x00" in entry:
        return f"image id {entry!r} contains a NUL byte"
    if entry.startswith(("/", "\\")) or (len(entry) > 1 and entry[1] == ":"):
        return f"image id {entry!r} is an absolute path that escapes the dataset root"
    parts = entry.replace("\\", "/").split("/")
    if ".." in parts:
        return f"image id {entry!r} contains '..' and escapes the dataset root"
    if len(parts) > 1 or entry in (".",):
        return f"image id {entry!r} is not a plain file-name stem"
    return None


def parse_list_line(line: str) -> str:
    """The image id of one list line.

    Accepts the plain form (``2007_000032``) and the two-column form of the DeepLab
    ``train_aug.txt`` (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``), whose
    first column is reduced to its stem only when it has exactly that shape.
    """
    tokens = line.split()
    if not tokens:
        return ""
    first = tokens[0]
    if len(tokens) == 2:
        norm = first.lstrip("/")
        if norm.startswith("JPEGImages/") and norm.count("/") == 1 and norm.endswith(".jpg"):
            return norm[len("JPEGImages/"):-len(".jpg")]
    if len(tokens) > 1:
        return line.strip()  # rejected by id_problem (or an odd id) below
    return first


def read_id_list(path: Path, on_bad: OnBadEntry | None = None) -> list[str]:
    """Ids of a split list file, in file order (blank lines skipped, duplicates kept once).

    A bad entry raises :class:`WsssBenchError` naming the file and line, unless ``on_bad`` is
    given, in which case it is reported there and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("split list file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WsssBenchError(f"cannot read split list ({e})", path) from None
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        entry = parse_list_line(line)
        why = id_problem(entry)
        if why is not None:
            msg = f"line {lineno}: {why}"
            if on_bad is None:
                raise WsssBenchError(msg, path)
            on_bad(path, msg, "error")
            continue
        if entry in seen:
            if on_bad is not None:
                on_bad(path, f"line {lineno}: duplicate image id {entry!r} (kept once)", "warning")
            continue
        seen.add(entry)
        ids.append(entry)
    return ids


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`WsssBenchError` naming it."""
    if not path.is_dir():
        raise WsssBenchError(f"{what} folder not found", path)
    return path


def check_options(dataset: str, options: dict, allowed: dict[str, tuple | type | None]) -> None:
    """Reject unknown options and values outside a declared choice."""
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise WsssBenchError(f"unknown option {key!r} for dataset {dataset} (known: {known})")
        choices = allowed[key]
        if isinstance(choices, tuple) and value not in choices:
            raise WsssBenchError(
                f"option {key}={value!r} for dataset {dataset} must be one of {', '.join(map(str, choices))}")
