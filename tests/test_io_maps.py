"""Reading map files safely: IRN's real .npy (torch tensors inside), EDAM's dicts, class PNGs, value
checks; output file modes; checkpoint dtype and compression-bomb refusals."""

from __future__ import annotations

import collections
import io
import os
import pickle
import stat
import struct
import zipfile

import numpy as np
import pytest
import torch

from wsss_bench import io as wio
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import (
    atomic_write_text,
    check_state_dtypes,
    check_zip_expansion,
    index_map_pngs,
    load_cam_file,
    load_cam_pngs,
    load_state_dict,
    save_cam_pngs,
)

# -- IRN's make_cam.py output --------------------------------------------------------------------


def write_like_make_cam(path, label, hr, strided):
    """``np.save(path, {"keys": valid_cat, "cam": strided_cam.cpu(), "high_res": highres_cam.cpu().numpy()})``"""
    valid_cat = torch.nonzero(torch.from_numpy(label))[:, 0]
    strided_cam = torch.from_numpy(strided)[valid_cat]
    highres_cam = torch.from_numpy(hr)[valid_cat]
    np.save(path, {"keys": valid_cat, "cam": strided_cam.cpu(), "high_res": highres_cam.cpu().numpy()})


def test_irn_npy_with_tensors_is_read(tmp_path):
    rng = np.random.default_rng(0)
    label = np.zeros(20, np.float32)
    label[[2, 14]] = 1
    hr = rng.random((20, 9, 11)).astype(np.float32)
    strided = rng.random((20, 3, 3)).astype(np.float32)
    p = tmp_path / "2007_000032.npy"
    write_like_make_cam(p, label, hr, strided)
    classes, scores = load_cam_file(p)
    assert classes.tolist() == [3, 15]
    np.testing.assert_array_equal(scores, hr[[2, 14]])
    # a file without high_res: the strided tensor is used
    np.save(p, {"keys": torch.tensor([2, 14]), "cam": torch.from_numpy(strided[[2, 14]])})
    classes, scores = load_cam_file(p)
    np.testing.assert_array_equal(scores, strided[[2, 14]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool])
def test_tensors_of_every_dtype_decode_like_torch(tmp_path, dtype):
    t = (torch.rand(2, 3, 5) * 4).to(dtype)
    view = t[:, 1:, ::2].transpose(1, 2)  # a strided view of a larger storage
    np.save(tmp_path / "t.npy", {"keys": torch.tensor([0, 1]), "cam": view})
    obj = wio._load_pickled_npy(tmp_path / "t.npy", (tmp_path / "t.npy").read_bytes())
    ref = view.float() if dtype == torch.bfloat16 else view
    np.testing.assert_array_equal(obj["cam"], ref.numpy())
    assert obj["keys"].tolist() == [0, 1]


class _RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


class _ViaStorageLoader:
    """Reduces to torch.storage._load_from_bytes(payload): what a tensor pickle calls."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        import torch.storage

        return (torch.storage._load_from_bytes, (self.payload,))


class _Rebuild:
    def __init__(self, storage, size):
        self.storage, self.size = storage, size

    def __reduce__(self):
        import torch._utils

        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, (1,), False, collections.OrderedDict()))


def _save_npy(path, obj):
    arr = np.empty((), dtype=object)
    arr[()] = obj
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)


def test_code_inside_a_tensor_storage_payload_is_refused(tmp_path):
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_RunsCode(target), buf, _use_new_zipfile_serialization=False)  # legacy format, like storages
    p = tmp_path / "evil.npy"
    _save_npy(p, {"keys": np.array([0]), "high_res": _ViaStorageLoader(buf.getvalue())})
    with pytest.raises(WsssBenchError, match="evil.npy: unsafe or corrupt"):
        load_cam_file(p)
    assert not target.exists()


def test_zip_format_storage_and_out_of_bounds_geometry_are_refused(tmp_path):
    buf = io.BytesIO()
    torch.save(torch.zeros(4).untyped_storage(), buf)  # zip format
    p = tmp_path / "z.npy"
    _save_npy(p, {"keys": np.array([0]), "high_res": _ViaStorageLoader(buf.getvalue())})
    with pytest.raises(WsssBenchError, match="zip format"):
        load_cam_file(p)
    small = torch.zeros(4).storage()  # pickles as _load_from_bytes(legacy bytes)
    p = tmp_path / "oob.npy"
    _save_npy(p, {"keys": np.array([0]), "high_res": _Rebuild(small, (10_000,))})
    with pytest.raises(WsssBenchError, match="exceeds its storage"):
        load_cam_file(p)


def test_other_callables_are_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    p = tmp_path / "evil.npy"
    _save_npy(p, {"keys": np.array([0]), "high_res": _RunsCode(target)})
    with pytest.raises(WsssBenchError) as e:
        load_cam_file(p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value) and not target.exists()


# -- EDAM dicts, class PNGs, value checks ---------------------------------------------------------


def test_edam_dict_is_read(tmp_path):
    rng = np.random.default_rng(1)
    d = {14: rng.random((5, 6)).astype(np.float32), 2: rng.random((5, 6)).astype(np.float32)}
    np.save(tmp_path / "a.npy", d)
    classes, scores = load_cam_file(tmp_path / "a.npy")
    assert classes.tolist() == [3, 15]
    np.testing.assert_array_equal(scores, np.stack([d[2], d[14]]))


@pytest.mark.parametrize("bits", [8, 16])
def test_class_pngs_decode_to_value_over_full_scale(tmp_path, bits):
    rng = np.random.default_rng(2)
    s = rng.random((2, 7, 9)).astype(np.float32)
    save_cam_pngs(tmp_path, "2007_000001", np.array([4, 12]), s, bits=bits)
    (tmp_path / "2007_000001.png").write_bytes(b"")  # a mask-like name is not a class PNG
    idx = index_map_pngs(tmp_path)
    assert set(idx) == {"2007_000001"} and sorted(idx["2007_000001"]) == [4, 12]
    classes, scores = load_cam_pngs(idx["2007_000001"])
    top = 255 if bits == 8 else 65535
    want = np.rint(s * top).astype(np.float32) / np.float32(top)
    assert classes.tolist() == [4, 12]
    np.testing.assert_array_equal(scores, want)


def test_values_outside_unit_range_are_refused_unless_normalised(tmp_path):
    s = np.array([[[0.0, 2.0], [1.0, 4.0]], [[-1.0, 0.0], [1.0, 3.0]]], np.float32)
    p = tmp_path / "m.npz"
    np.savez(p, classes=np.array([1, 2]), scores=s)
    load_cam_file(p)  # finite: fine without the range check
    with pytest.raises(WsssBenchError, match=r"m.npz: maps have values outside \[0, 1\].*--normalize"):
        load_cam_file(p, unit_range=True)
    _, mx = load_cam_file(p, normalize="max", unit_range=True)
    np.testing.assert_array_equal(mx[0], s[0] / 4)
    np.testing.assert_array_equal(mx[1], np.maximum(s[1], 0) / 3)
    _, mm = load_cam_file(p, normalize="minmax", unit_range=True)
    np.testing.assert_array_equal(mm[1], (s[1] + 1) / 4)
    with pytest.raises(WsssBenchError, match="normalize"):
        load_cam_file(p, normalize="sigmoid")
    for bad in (np.nan, np.inf, -np.inf):
        s2 = s.copy()
        s2[0, 0, 0] = bad
        np.savez(p, classes=np.array([1, 2]), scores=s2)
        with pytest.raises(WsssBenchError, match="m.npz: maps contain NaN or infinite"):
            load_cam_file(p, normalize="max")


# -- output files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    """The umask in force when the file is written (read each time, not cached at import)."""
    old = os.umask(umask)
    try:
        assert wio.current_umask() == umask
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o666 & ~umask


def test_current_umask_is_the_process_umask(monkeypatch):
    monkeypatch.setattr(wio, "_UMASK", [])
    old = os.umask(0o022)
    os.umask(old)
    assert wio.current_umask() == old


# -- checkpoints -----------------------------------------------------------------------------------


def test_safetensors_of_a_dtype_no_model_takes_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.zeros(2, 2, dtype=torch.complex64)}, str(p))
    with pytest.raises(WsssBenchError, match="'a.weight' has dtype complex64"):
        load_state_dict(p)
    save_file({"a.weight": torch.zeros(2, 2, dtype=torch.int32), "bn.num_batches_tracked": torch.tensor(3.0)}, str(p))
    state = load_state_dict(p)
    model = {"a.weight": torch.zeros(2, 2), "bn.num_batches_tracked": torch.tensor(0)}
    with pytest.raises(WsssBenchError, match="'a.weight' has dtype int32 but the model expects a floating-point"):
        check_state_dtypes({"a.weight": state["a.weight"]}, model, p)
    state["a.weight"] = state["a.weight"].half()
    with pytest.raises(WsssBenchError, match="num_batches_tracked.*expects an integer tensor"):
        check_state_dtypes(state, model, p)
    state["bn.num_batches_tracked"] = torch.tensor(3)
    check_state_dtypes(state, model, p)


def _inflate_declared_size(path, size):
    """Rewrite a zip's declared uncompressed sizes (local header and central directory)."""
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(sig)
        while pos >= 0:
            struct.pack_into("<I", data, pos + off, size)
            pos = data.find(sig, pos + 4)
    path.write_bytes(bytes(data))


def test_a_compression_bomb_is_refused_before_reading(tmp_path):
    p = tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(4)}, p)
    assert load_state_dict(p)["w"].shape == (4,)  # an honest (stored) torch zip loads
    with zipfile.ZipFile(p) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
        z.writestr(members[0][0].split("/")[0] + "/padding", b"\0" * (8 << 20))  # 8 MiB of zeros, ~8 KiB on disk
    with pytest.raises(WsssBenchError, match="compression bomb"):
        check_zip_expansion(p, max_expansion=64, floor_bytes=1 << 20)
    _inflate_declared_size(p, 0xF0000000)  # declares 3.75 GiB per member
    with pytest.raises(WsssBenchError, match="bomb.pth: refused to load: the archive declares"):
        load_state_dict(p)
    assert pickle  # noqa: B018 - imported for the payload classes above
