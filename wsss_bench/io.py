"""File I/O at the edges: atomic writes, safe checkpoint and map loading, PNG mask reading.

Every writer here writes to a temporary name in the target folder and renames it into place,
so an interrupted process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError

_UMASK: list[int] = []


def current_umask() -> int:
    """The process umask: read from /proc each time where it can be (no side effect, so safe in
    threads), else set and restored once and remembered."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    if not _UMASK:
        value = os.umask(0o022)
        os.umask(value)
        _UMASK.append(value)
    return _UMASK[0]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps the final suffix (libraries such as Pillow and numpy pick the
    format from it). On error the temporary file is removed and the target is untouched. The
    file gets the mode a plain ``open()`` would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise WsssBenchError(f"cannot read file ({e.strerror})", path) from None
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Localisation maps
# ----------------------------------------------------------------------------------------------


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}

#: torch storage classes in a legacy serialisation -> numpy dtype ("bf16" is widened to float32)
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bf16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Plain data only (ints, strings, lists, dicts): any global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class _StorageUnpickler(pickle.Unpickler):
    """The object record of a legacy ``torch.save(storage)``: storage classes as markers only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("unexpected persistent id in a tensor storage")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("tensor storage views are not supported")
        return ("storage", pid[1].name, str(pid[2]), int(pid[4]))


def _load_torch_storage(data: bytes) -> np.ndarray:
    """A tensor storage as ``torch.storage._load_from_bytes`` receives it (torch's legacy format:
    magic, version, sys-info and object pickles, then the raw little-endian bytes), read into a
    flat numpy array without torch and without running anything from the data."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage payload is not bytes")
    if data[:2] == b"PK":
        raise pickle.UnpicklingError("tensor storage in torch's zip format is not supported")
    f = io.BytesIO(data)
    if _NoGlobalsUnpickler(f).load() != _TORCH_MAGIC or _NoGlobalsUnpickler(f).load() != _TORCH_LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("not a torch tensor storage")
    info = _NoGlobalsUnpickler(f).load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise pickle.UnpicklingError("tensor storage is not little-endian")
    record = _StorageUnpickler(f).load()
    keys = _NoGlobalsUnpickler(f).load()
    if not (isinstance(record, tuple) and isinstance(keys, list) and keys == [record[2]]):
        raise pickle.UnpicklingError("unexpected tensor storage layout")
    _, type_name, _, numel = record
    code = _STORAGE_DTYPES[type_name]
    dtype = np.dtype("<u2" if code == "bf16" else code)
    head = f.read(8)
    if len(head) != 8:
        raise pickle.UnpicklingError("truncated tensor storage")
    count = int.from_bytes(head, "little", signed=True)
    if count != numel or count < 0:
        raise pickle.UnpicklingError("tensor storage size does not match its record")
    raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise pickle.UnpicklingError("truncated tensor storage")
    arr = np.frombuffer(raw, dtype=dtype)
    if code == "bf16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` as a numpy copy, with every index checked."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("tensor without a storage")
    try:
        offset = int(offset)
        size = tuple(int(v) for v in size)
        stride = tuple(int(v) for v in stride)
    except (TypeError, ValueError):
        raise pickle.UnpicklingError("bad tensor geometry") from None
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in size + stride):
        raise pickle.UnpicklingError("bad tensor geometry")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if last >= storage.size:
        raise pickle.UnpicklingError("tensor geometry exceeds its storage")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[st * item for st in stride],
                                           writeable=False)
    return np.array(view)


class _PlainUnpickler(pickle.Unpickler):
    """Admits only what a map ``.npy`` dict holds: dicts, lists, numpy arrays, scalars, and torch
    tensors (IRN's ``make_cam.py`` pickles its ``keys`` and ``cam`` as tensors), which are rebuilt
    as numpy arrays by the parsers above, never by torch's unpickling machinery."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_torch_storage
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickled_npy(path: Path, raw: bytes | None = None) -> Any:
    """Read a ``.npy`` file written by ``np.save(path, dict)`` without running arbitrary code
    (from ``raw`` when given, else straight from the file: one copy fewer)."""
    try:
        f: Any = io.BytesIO(raw) if raw is not None else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise WsssBenchError(f"cannot read map file ({e.strerror})", path) from None
    with f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as e:  # noqa: BLE001 - numpy raises several types for a bad header
            raise WsssBenchError(f"not a valid .npy file ({e})", path) from None
        if dtype.hasobject:
            try:
                obj = _PlainUnpickler(f).load()
            except Exception as e:  # noqa: BLE001
                raise WsssBenchError(f"unsafe or corrupt pickled .npy content ({e})", path) from None
            if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
                obj = obj.item()
            return obj
        try:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise WsssBenchError(f"corrupt .npy file ({e})", path) from None


NORMALIZE_MODES = ("max", "minmax")

#: Map files ``wsss-bench eval --cams`` reads.
MAP_SUFFIXES = (".npz", ".npy")


def _maps_from_dict(obj: Any, path: Path) -> tuple[np.ndarray, Any]:
    """(classes 1-based, scores) from an IRN-style dict (``keys`` + ``high_res``/``cam``) or an
    EDAM-style dict (``{0-based class: HxW map}``, EDAM's ``infer_cls.py --out_cam``)."""
    if not isinstance(obj, dict):
        raise WsssBenchError("expected a dict with 'keys' and 'high_res' or 'cam', or {class: map}", path)
    if obj and all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in obj):
        keys = sorted(int(k) for k in obj)
        try:
            maps = [np.asarray(obj[k], dtype=np.float32) for k in keys]
        except (TypeError, ValueError) as e:
            raise WsssBenchError(f"bad map arrays ({e})", path) from None
        if any(mp.ndim != 2 or mp.shape != maps[0].shape for mp in maps):
            raise WsssBenchError("EDAM-style maps must all be 2-D of one size", path)
        return np.asarray(keys, dtype=np.int64) + 1, maps
    if "keys" not in obj or not ("high_res" in obj or "cam" in obj):
        raise WsssBenchError(f"dict lacks 'keys' and 'high_res'/'cam' (has {sorted(map(str, obj))})", path)
    try:
        classes = np.asarray(obj["keys"]).astype(np.int64).reshape(-1) + 1
        scores = np.asarray(obj["high_res"] if "high_res" in obj else obj["cam"])
    except (TypeError, ValueError) as e:
        raise WsssBenchError(f"bad map arrays ({e})", path) from None
    return classes, scores


def load_cam_file(path: str | os.PathLike, normalize: str | None = None,
                  unit_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load localisation maps from our ``.npz`` or an IRN/EDAM-style ``.npy`` dict.

    Returns ``(classes, scores)``: ``classes`` int64 [K] with *1-based* foreground class indices
    (the class-index convention of masks), ``scores`` float32 [K, H, W].

    - ``.npz`` (ours): arrays ``classes`` (1-based class indices) and ``scores``.
    - ``.npy``, IRN style (``make_cam.py``): a pickled dict with ``keys`` (0-based foreground ids)
      and ``high_res`` or ``cam`` [K, H, W]; ``keys`` and ``cam`` may be torch tensors.
    - ``.npy``, EDAM style (``infer_cls.py --out_cam``): a pickled dict {0-based id: HxW map}.

    Pickles go through a restricted unpickler (numpy arrays; torch tensors rebuilt as numpy by a
    parser of torch's storage format; nothing else). NaN and infinite values are refused.
    ``unit_range``: values outside [0, 1] are refused too, unless ``normalize`` rescales each map:
    ``max`` (negative values to 0, then divided by the map's maximum) or ``minmax`` ((s - min) /
    (max - min)); a map with nothing to scale becomes zeros.
    """
    path = Path(path)
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise WsssBenchError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
    if path.suffix == ".npz":
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise WsssBenchError(f"cannot read map file ({e.strerror})", path) from None
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                if "classes" not in z.files or "scores" not in z.files:
                    raise WsssBenchError(f"map .npz lacks 'classes'/'scores' (has {sorted(z.files)})", path)
                classes = np.asarray(z["classes"]).astype(np.int64).reshape(-1)
                scores = np.asarray(z["scores"])
        except WsssBenchError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise WsssBenchError(f"corrupt .npz file ({e})", path) from None
        except Exception as e:  # noqa: BLE001 - zlib errors and others from a truncated archive
            raise WsssBenchError(f"corrupt .npz file ({type(e).__name__}: {e})", path) from None
    elif path.suffix == ".npy":
        classes, scores = _maps_from_dict(_load_pickled_npy(path), path)
    else:
        raise WsssBenchError("unknown map format (expected .npz or .npy)", path)
    return classes, _checked_maps(classes, scores, path, normalize, unit_range)


def _checked_maps(classes: np.ndarray, scores: Any, path: Path, normalize: str | None,
                  unit_range: bool) -> np.ndarray:
    try:
        s = np.stack(scores) if isinstance(scores, list) else np.asarray(scores)
        if s.dtype.kind not in "fiub":
            raise TypeError(f"maps have dtype {s.dtype}")
        s = s.astype(np.float32, copy=False)
    except (TypeError, ValueError) as e:
        raise WsssBenchError(f"bad map arrays ({e})", path) from None
    if s.ndim == 2 and classes.size == 1:
        s = s[None]
    if s.ndim != 3 or s.shape[0] != classes.size:
        raise WsssBenchError(f"maps have shape {tuple(s.shape)} but {classes.size} classes are listed", path)
    if not s.size:
        return s
    lo, hi = float(s.min()), float(s.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise WsssBenchError("maps contain NaN or infinite values", path)
    if normalize is not None:
        return normalize_maps(s, normalize)
    if unit_range and (lo < 0.0 or hi > 1.0):
        raise WsssBenchError(f"maps have values outside [0, 1] (min {lo:.6g}, max {hi:.6g}); "
                             f"rescale them with --normalize max or minmax", path)
    return s


def normalize_maps(scores: np.ndarray, mode: str) -> np.ndarray:
    """Rescale each map of a [K, H, W] float32 stack into [0, 1] (see :func:`load_cam_file`)."""
    s = np.array(scores, dtype=np.float32)
    flat = s.reshape(s.shape[0], -1)
    if mode == "max":
        np.maximum(flat, np.float32(0), out=flat)
        top = flat.max(axis=1, initial=0)
        for i in range(flat.shape[0]):
            if top[i] > 0:
                flat[i] /= top[i]
    elif mode == "minmax":
        for i in range(flat.shape[0]):
            lo, hi = flat[i].min(), flat[i].max()
            if hi > lo:
                flat[i] -= lo
                flat[i] /= hi - lo
            else:
                flat[i] = 0
    else:
        raise WsssBenchError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
    return s


_MAP_PNG_NAME = re.compile(r"^(?P<id>.+)_(?P<cls>[0-9]{1,3})\.png$")


def index_map_pngs(folder: str | os.PathLike) -> dict[str, dict[int, Path]]:
    """Maps stored as PNG: one greyscale PNG per image and class, ``<id>_<c>.png`` with ``c`` the
    1-based class index (as in masks), 8-bit (score = value / 255) or 16-bit (value / 65535).
    Returns {id: {class: path}} from one listing of the folder."""
    out: dict[str, dict[int, Path]] = {}
    folder = Path(folder)
    with os.scandir(folder) as it:
        for entry in it:
            mt = _MAP_PNG_NAME.match(entry.name)
            if mt:
                out.setdefault(mt["id"], {})[int(mt["cls"])] = folder / entry.name
    return out


def load_cam_pngs(files: dict[int, Path], normalize: str | None = None,
                  unit_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(classes, scores [K, H, W] float32) from one image's class PNGs (see :func:`index_map_pngs`):
    score = float32(value) / float32(255 or 65535)."""
    from PIL import Image, UnidentifiedImageError

    classes = np.asarray(sorted(files), dtype=np.int64)
    maps = []
    for c in classes:
        p = files[int(c)]
        try:
            with Image.open(p) as im:
                mode = im.mode
                if mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
                    raise WsssBenchError(f"a map PNG must be 8- or 16-bit greyscale, got mode {mode}", p)
                arr = np.array(im)
        except WsssBenchError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise WsssBenchError(f"cannot decode image ({e})", p) from None
        top = np.float32(255) if mode == "L" else np.float32(65535)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > int(top)):
            raise WsssBenchError("a 16-bit map PNG holds values outside 0..65535", p)
        maps.append(arr.astype(np.float32) / top)
    if any(mp.shape != maps[0].shape for mp in maps):
        raise WsssBenchError("the class PNGs of one image differ in size", files[int(classes[0])])
    path = files[int(classes[0])] if classes.size else Path(".")
    return classes, _checked_maps(classes, maps, path, normalize, unit_range)


def save_cam_pngs(folder: str | os.PathLike, image_id: str, classes: np.ndarray, scores: np.ndarray,
                  bits: int = 16) -> None:
    """Write maps (in [0, 1]) as class PNGs ``<id>_<c>.png`` (rounded to 8 or 16 bits), atomically."""
    from PIL import Image

    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    top = 255 if bits == 8 else 65535
    for c, s in zip(np.asarray(classes).reshape(-1), np.asarray(scores), strict=True):
        v = np.rint(np.clip(s, 0, 1) * top)
        im = Image.fromarray(v.astype(np.uint8 if bits == 8 else np.uint16))
        with atomic_path(Path(folder) / f"{image_id}_{int(c)}.png") as tmp:
            im.save(tmp, format="PNG")


def save_cam_file(path: str | os.PathLike, classes: np.ndarray, scores: np.ndarray,
                  dtype: str = "float16") -> None:
    """Write maps in our ``.npz`` format (1-based class indices), atomically."""
    atomic_save_npz(path, classes=np.asarray(classes, dtype=np.int64),
                    scores=np.asarray(scores).astype(dtype))


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index mask (palette 'P' or greyscale 'L'/'I') as uint8 HxW, never via RGB."""
    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("file not found", path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WsssBenchError(f"cannot read file ({e.strerror})", path) from None
    return decode_index_png(raw, path)[0]


def decode_index_png(raw: bytes, path: str | os.PathLike, histogram: bool = False,
                     writable: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 HxW mask, its 256-bin histogram or None) from a PNG's bytes; ``path`` names errors.

    The histogram comes from Pillow's own pass over the decoded image (cheaper than numpy's
    ``bincount``, which widens every pixel to 64 bits first). ``writable=False`` skips a copy
    (the array is then read-only)."""
    from PIL import Image, UnidentifiedImageError

    hist = None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            mode = im.mode
            if mode not in ("P", "L", "I", "I;16"):
                raise WsssBenchError(
                    f"mask must be single-channel palette or greyscale, got mode {mode}", path)
            im.load()
            if histogram and mode in ("P", "L"):
                hist = np.asarray(im.histogram(), dtype=np.int64)
            arr = np.array(im) if writable else np.asarray(im)
    except WsssBenchError:
        raise
    except Image.DecompressionBombError as e:
        raise WsssBenchError(f"image too large to be a mask ({e})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise WsssBenchError(f"cannot decode image ({e})", path) from None
    if arr.ndim != 2:
        raise WsssBenchError(f"mask must be 2-D, got shape {arr.shape}", path)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise WsssBenchError(f"mask values must be in 0..255, found {int(arr.max())}", path)
        arr = arr.astype(np.uint8)
    if histogram and hist is None:
        hist = np.bincount(arr.reshape(-1), minlength=256)
    return arr, hist


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB; a corrupt or truncated file is a WsssBenchError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("file not found", path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise WsssBenchError(f"image too large ({e})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise WsssBenchError(f"cannot decode image ({e})", path) from None


def write_index_png(path: str | os.PathLike, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a uint8 class-index mask as a palette PNG (or greyscale without palette), atomically."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got {mask.shape}")
    im = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


#: dtypes a checkpoint tensor may have (anything else, e.g. complex or float8, is refused).
CHECKPOINT_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")

#: A zip checkpoint may declare at most this many times its own size uncompressed (or 1 GiB).
MAX_ZIP_EXPANSION = 64


def check_zip_expansion(path: str | os.PathLike, max_expansion: int = MAX_ZIP_EXPANSION,
                        floor_bytes: int = 1 << 30) -> None:
    """Refuse a zip (torch's checkpoint format) whose members declare more uncompressed bytes than
    ``max(max_expansion * file size, floor_bytes)``: torch would inflate them all into memory.
    torch writes its zips uncompressed, so an honest checkpoint declares about its own size."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            declared = sum(max(i.file_size, 0) for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise WsssBenchError(f"cannot read checkpoint archive ({e})", path) from None
    cap = max(max_expansion * size, floor_bytes)
    if declared > cap:
        raise WsssBenchError(f"refused to load: the archive declares {declared / 2**30:.2f} GiB uncompressed, "
                             f"{declared / max(size, 1):.0f} times its size on disk (a compression bomb?)", path)


def _dtype_name(t: Any) -> str:
    return str(getattr(t, "dtype", type(t).__name__)).replace("torch.", "")


def check_state_dtypes(state: dict[str, Any], expected: dict[str, Any] | None = None,
                       path: str | os.PathLike | None = None) -> None:
    """Refuse tensors the model cannot take, naming the first one.

    Every tensor's dtype must be one of :data:`CHECKPOINT_DTYPES`; with ``expected`` (the model's
    ``state_dict()``), a key the model holds as floating point must be floating point in the
    checkpoint and an integer/bool buffer must be integer/bool (``load_state_dict`` would
    otherwise cast silently, e.g. integer weights into a float layer).
    """
    for k, v in state.items():
        name = _dtype_name(v)
        if name not in CHECKPOINT_DTYPES:
            raise WsssBenchError(f"tensor {k!r} has dtype {name}, which no model here takes "
                                 f"(accepted: {', '.join(CHECKPOINT_DTYPES)})", path)
        if expected is None or k not in expected:
            continue
        want = _dtype_name(expected[k])
        floating = name in ("float16", "bfloat16", "float32", "float64")
        want_floating = want in ("float16", "bfloat16", "float32", "float64")
        if floating != want_floating:
            kind = "a floating-point" if want_floating else "an integer"
            raise WsssBenchError(f"tensor {k!r} has dtype {name} but the model expects {kind} tensor ({want})", path)


def load_state_dict(path: str | os.PathLike, max_expansion: int = MAX_ZIP_EXPANSION) -> dict[str, Any]:
    """Load a checkpoint's tensors without unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``. A pickle that carries code is refused without running it;
    a zip that would inflate to far more than its size is refused before it is read
    (:func:`check_zip_expansion`); a tensor of a dtype no model takes is refused
    (:func:`check_state_dtypes`; call it again with the model's ``state_dict()`` for the
    per-key check). A dict wrapping the weights under ``state_dict``/``model``/``net``/
    ``model_state_dict``/``model_state`` (VainF's DeepLab-v3+ training checkpoints) is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("checkpoint not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = dict(load_file(str(path), device="cpu"))
        except Exception as e:  # noqa: BLE001
            raise WsssBenchError(f"cannot read safetensors checkpoint ({e})", path) from None
        check_state_dtypes(state, None, path)
        return state
    check_zip_expansion(path, max_expansion)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling refused"
        raise WsssBenchError(
            f"refused to load: not a plain tensor checkpoint (weights_only=True): {first}", path) from None
    except Exception as e:  # noqa: BLE001
        raise WsssBenchError(f"cannot read checkpoint ({type(e).__name__}: {e})", path) from None
    for key in ("state_dict", "model", "net", "model_state_dict", "model_state"):  # model_state: VainF's
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WsssBenchError("checkpoint is not a state dict of named tensors", path)
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    check_state_dtypes(state, None, path)
    return state
