"""File I/O at the edges: atomic writes, safe checkpoint and map loading, PNG mask reading.

Every writer here writes to a temporary name in the target folder and renames it into place,
so an interrupted process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps the final suffix (libraries such as Pillow and numpy pick the
    format from it). On error the temporary file is removed and the target is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
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


class _PlainUnpickler(pickle.Unpickler):
    """Admits only what an IRN-style ``.npy`` dict holds: dicts, lists, numpy arrays, scalars."""

    _ALLOWED = {
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

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickled_npy(path: Path, raw: bytes) -> Any:
    """Read a ``.npy`` file written by ``np.save(path, dict)`` without running arbitrary code."""
    f = io.BytesIO(raw)
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
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise WsssBenchError(f"corrupt .npy file ({e})", path) from None


def load_cam_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load localisation maps from our ``.npz`` or an IRN-style ``.npy`` dict.

    Returns ``(classes, scores)``: ``classes`` int64 [K] with *1-based* foreground class indices
    (the class-index convention of masks), ``scores`` float32 [K, H, W].

    - ``.npz`` (ours): arrays ``classes`` (1-based class indices) and ``scores``.
    - ``.npy`` (IRN/EDAM style): a pickled dict with ``keys`` (0-based foreground ids) and
      ``high_res`` or ``cam`` [K, H, W]. Loaded with a restricted unpickler.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WsssBenchError(f"cannot read map file ({e.strerror})", path) from None
    if path.suffix == ".npz":
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                if "classes" not in z.files or "scores" not in z.files:
                    raise WsssBenchError(f"map .npz lacks 'classes'/'scores' (has {sorted(z.files)})", path)
                classes = np.asarray(z["classes"]).astype(np.int64).reshape(-1)
                scores = np.asarray(z["scores"]).astype(np.float32)
        except WsssBenchError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise WsssBenchError(f"corrupt .npz file ({e})", path) from None
        except Exception as e:  # noqa: BLE001 - zlib errors and others from a truncated archive
            raise WsssBenchError(f"corrupt .npz file ({type(e).__name__}: {e})", path) from None
    elif path.suffix == ".npy":
        obj = _load_pickled_npy(path, raw)
        if not isinstance(obj, dict):
            raise WsssBenchError("expected a dict with 'keys' and 'high_res' or 'cam'", path)
        if "keys" not in obj or not ("high_res" in obj or "cam" in obj):
            raise WsssBenchError(f"dict lacks 'keys' and 'high_res'/'cam' (has {sorted(map(str, obj))})", path)
        try:
            classes = np.asarray(obj["keys"]).astype(np.int64).reshape(-1) + 1
            scores = np.asarray(obj["high_res"] if "high_res" in obj else obj["cam"]).astype(np.float32)
        except (TypeError, ValueError) as e:
            raise WsssBenchError(f"bad map arrays ({e})", path) from None
    else:
        raise WsssBenchError("unknown map format (expected .npz or .npy)", path)
    if scores.ndim == 2 and classes.size == 1:
        scores = scores[None]
    if scores.ndim != 3 or scores.shape[0] != classes.size:
        raise WsssBenchError(
            f"maps have shape {tuple(scores.shape)} but {classes.size} classes are listed", path
        )
    if not np.all(np.isfinite(scores)):
        raise WsssBenchError("maps contain NaN or infinite values", path)
    return classes, scores


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
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("file not found", path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L", "I", "I;16"):
                raise WsssBenchError(
                    f"mask must be single-channel palette or greyscale, got mode {mode}", path)
            arr = np.array(im)
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
    return arr


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


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's tensors without unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``. A pickle that carries code is refused without running it.
    A dict wrapping the weights under ``state_dict``/``model``/``net``/``model_state_dict``/
    ``model_state`` (VainF's DeepLab-v3+ training checkpoints) is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WsssBenchError("checkpoint not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # noqa: BLE001
            raise WsssBenchError(f"cannot read safetensors checkpoint ({e})", path) from None
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
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
