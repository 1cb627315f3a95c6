"""Fuzzing the file readers: random bytes, truncations and byte flips of valid files.

Every reader either returns a well-formed result or raises :class:`WsssBenchError`; no other
exception escapes, nothing crashes the process and no call takes longer than a few seconds (an
interval timer turns a hang into a test failure). Inputs are bounded to a few kilobytes.
"""

from __future__ import annotations

import contextlib
import io
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsss_bench.errors import WsssBenchError
from wsss_bench.io import load_cam_file, load_state_dict, read_index_png, read_rgb_image

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 10.0


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reader did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- valid seed files ------------------------------------------------------------------------------


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez_compressed(buf, classes=np.array([2, 5]), scores=rng.random((2, 6, 7)).astype(np.float16))
    return buf.getvalue()


def npy_dict_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    np.save(buf, np.array({"keys": np.array([0, 3]), "high_res": rng.random((2, 5, 6)).astype(np.float32),
                           "cam": rng.random((2, 3, 3)).astype(np.float32)}, dtype=object), allow_pickle=True)
    return buf.getvalue()


def palette_png_bytes() -> bytes:
    m = (np.arange(9 * 11).reshape(9, 11) % 7).astype(np.uint8)
    m[0] = 255
    im = Image.fromarray(m, mode="L").convert("P")
    im.putpalette(list(range(256)) * 3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def pth_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)}}, buf)
    return buf.getvalue()


def safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)})


def png_claiming_size(w: int, h: int) -> bytes:
    """A PNG header for a huge image with almost no data: a decompression bomb's first bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# -- what a reader may return -------------------------------------------------------------------------


def check_maps(out: tuple[np.ndarray, np.ndarray]) -> None:
    classes, scores = out
    assert classes.dtype == np.int64 and classes.ndim == 1
    assert scores.dtype == np.float32 and scores.ndim == 3 and scores.shape[0] == classes.size
    assert np.isfinite(scores).all()


def check_mask(out: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.ndim == 2


def check_rgb(out: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def check_state(out: dict) -> None:
    assert isinstance(out, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out.items())


READERS: dict[str, tuple[Callable[[Path], Any], Callable[[Any], None], str, bytes]] = {
    "npz": (load_cam_file, check_maps, ".npz", npz_bytes()),
    "npy": (load_cam_file, check_maps, ".npy", npy_dict_bytes()),
    "index-png": (read_index_png, check_mask, ".png", palette_png_bytes()),
    "rgb-jpeg": (read_rgb_image, check_rgb, ".jpg", image_bytes("JPEG")),
    "rgb-png": (read_rgb_image, check_rgb, ".png", image_bytes("PNG")),
    "pth": (load_state_dict, check_state, ".pth", pth_bytes()),
    "safetensors": (load_state_dict, check_state, ".safetensors", safetensors_bytes()),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def feed(scratch: Path, kind: str, data: bytes) -> None:
    reader, check, suffix, _ = READERS[kind]
    p = scratch / f"input{suffix}"
    p.write_bytes(data)
    with no_hang():
        try:
            out = reader(p)
        except WsssBenchError as e:
            assert str(p) in str(e) and "\n" not in str(e), str(e)
            return
    check(out)


def test_seed_files_are_read(scratch):
    """The valid files the fuzzers start from are read (otherwise the fuzzing proves little)."""
    for reader, check, suffix, data in READERS.values():
        p = scratch / f"seed{suffix}"
        p.write_bytes(data)
        check(reader(p))
    classes, scores = load_cam_file(scratch / "seed.npy")
    assert classes.tolist() == [1, 4] and scores.shape == (2, 5, 6)  # 'high_res' preferred over 'cam'


MAGIC = {"npz": b"PK\x03\x04", "npy": b"\x93NUMPY\x01\x00", "index-png": b"\x89PNG\r\n\x1a\n",
         "rgb-png": b"\x89PNG\r\n\x1a\n", "rgb-jpeg": b"\xff\xd8\xff", "pth": b"PK\x03\x04",
         "safetensors": b"\x40\x00\x00\x00\x00\x00\x00\x00{"}


@pytest.mark.parametrize("kind", list(READERS))
@FUZZ
@given(data=st.binary(max_size=1500), magic=st.booleans())
def test_random_bytes(scratch, kind, data, magic):
    feed(scratch, kind, (MAGIC[kind] if magic else b"") + data)


@pytest.mark.parametrize("kind", list(READERS))
@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncations_of_valid_files(scratch, kind, cut):
    valid = READERS[kind][3]
    feed(scratch, kind, valid[: int(cut * len(valid))])


@pytest.mark.parametrize("kind", list(READERS))
@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_byte_flips_of_valid_files(scratch, kind, flips):
    data = bytearray(READERS[kind][3])
    for where, value in flips:
        data[int(where * len(data))] = value
    feed(scratch, kind, bytes(data))


@pytest.mark.parametrize("kind", ["index-png", "rgb-png"])
def test_decompression_bomb_header_is_a_user_error(scratch, kind):
    reader = READERS[kind][0]
    p = scratch / "bomb.png"
    p.write_bytes(png_claiming_size(100_000, 100_000))
    with no_hang(), pytest.raises(WsssBenchError, match="too large") as e:
        reader(p)
    assert str(p) in str(e.value)


def test_npz_member_claiming_a_huge_array_is_a_user_error(scratch):
    """A .npy header inside the archive may claim terabytes; the reader must not try to allocate them."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000, 100)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("classes.npy", _npy(np.array([1])))
        z.writestr("scores.npy", member.getvalue())
    p = scratch / "huge.npz"
    p.write_bytes(buf.getvalue())
    with no_hang(), pytest.raises(WsssBenchError) as e:
        load_cam_file(p)
    assert str(p) in str(e.value)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
