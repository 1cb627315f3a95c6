"""Split list files and image ids: reading, validation, and the protocol's split sizes.

An image id is a plain file-name stem (``2007_000032``, ``COCO_val2014_000000000042``). A list
entry that is empty, absolute, contains a path separator or ``..`` would let a split name a file
outside the dataset root; it is rejected with the list file and the line number, as is an id with
a NUL or another non-printable character (a stray byte-order mark), or too long for a file name.

How a list file is read: UTF-8, a byte-order mark at its start dropped; lines end in LF, CRLF or
CR; blank and whitespace-only lines are skipped and the spaces around an id ignored. A duplicate id
is kept once, at its first line (a list is a set of images, and counting one twice would weight it
twice in every mean); the dataset records a warning naming the file, the count and the first
repeated line, which ``datasets check`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsss_bench.errors import WsssBenchError

#: Split sizes defined by docs/protocol.md; ``datasets check`` warns (never fails) on a mismatch.
PROTOCOL_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "voc": {"train": 1464, "val": 1449, "trainval": 2913, "test": 1456, "train_aug": 10582},
    "coco": {"train": 82081, "val": 40137},
}

#: Called with (path, message, severity) for a bad entry when the caller collects problems
#: instead of failing; severity is ``"error"`` or ``"warning"``.
OnBadEntry = Callable[[Path, str, str], None]


#: Longest id in UTF-8 bytes: a file name is at most 255 bytes on common file systems, and the
#: id is followed by ``.jpg`` or ``.png``.
MAX_ID_BYTES = 251


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
    if not entry.isprintable():  # control, format (a stray BOM), separator or unassigned characters
        bad = next(ch for ch in entry if not ch.isprintable())
        return f"image id {entry!r} contains the non-printable character {bad!r}"
    size = len(entry.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"image id {entry[:40]!r}... is {size} bytes long, too long for a file name (at most {MAX_ID_BYTES})"
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
        return line.strip()  # rejected by read_id_list below
    return first


def _lines(text: str) -> list[str]:
    """Lines split at LF, CRLF and CR only (``str.splitlines`` also splits at form feeds, vertical
    tabs, U+2028 and others, which would shift the line numbers an editor shows)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_id_list(path: Path, on_bad: OnBadEntry | None = None) -> list[str]:
    """Ids of a split list file, in file order (see the module docstring for the accepted form).

    A bad entry raises :class:`WsssBenchError` naming the file and line, unless ``on_bad`` is
    given, in which case it is reported there (severity ``"error"``) and skipped. Duplicate ids are
    kept once; when there are any, ``on_bad`` (if given) receives one ``"warning"`` counting them.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a split list file" if path.is_dir() else "split list file not found"
        raise WsssBenchError(what, path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise WsssBenchError(f"cannot read split list ({e.strerror or e})", path) from None
    except UnicodeDecodeError as e:
        raise WsssBenchError(f"split list is not UTF-8 text (byte {e.start}: {e.reason})", path) from None
    text = text.removeprefix("\ufeff")
    ids: list[str] = []
    seen: set[str] = set()
    dups: list[tuple[int, str]] = []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        entry = parse_list_line(line)
        if len(line.split()) > 1 and entry == line.strip():
            why = (f"{len(line.split())} fields {line.strip()[:60]!r}; expected one image id per line (or the "
                   "two-column '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png' form)")
        else:
            why = id_problem(entry)
        if why is not None:
            msg = f"line {lineno}: {why}"
            if on_bad is None:
                raise WsssBenchError(msg, path)
            on_bad(path, msg, "error")
            continue
        if entry in seen:
            dups.append((lineno, entry))
            continue
        seen.add(entry)
        ids.append(entry)
    if dups and on_bad is not None:
        lineno, entry = dups[0]
        n = len(dups)
        on_bad(path, f"{n} duplicate image id{'s' if n > 1 else ''} kept once (first: line {lineno}, "
                     f"{entry!r})", "warning")
    return ids


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`WsssBenchError` naming it."""
    if not path.is_dir():
        raise WsssBenchError(f"{what} folder not found" if not path.exists() else f"{what} folder expected, found a file",
                             path)
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
