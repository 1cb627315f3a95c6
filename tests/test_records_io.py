"""Records on disk: paths relative to the record (a moved or cloned folder still rebuilds its
leaderboard), record + counts written as one unit, OS errors as one line, the umask respected."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
from reports_helpers import make_voc, pseudo_record

import wsss_bench.io as wio
from wsss_bench.cli import main
from wsss_bench.errors import WsssBenchError
from wsss_bench.records import PATH_FIELDS, read_counts, read_record, relative_to, write_record
from wsss_bench.reports import ReportWarning, build_leaderboard


def _record(**fields):
    rec = {"protocol_version": 2, "kind": "pseudo_label", "dataset": "synthetic", "split": "train", "num_images": 2,
           "fingerprint": "a" * 64, "classes": ["bg", "x"], "metrics": {"miou": 0.5, "iou": [0.6, 0.4]}, "name": "r"}
    rec.update(fields)
    return rec


def _counts():
    return {"ids": np.array(["i0", "i1"]), "tp": np.ones((2, 2), np.int64), "fp": np.zeros((2, 2), np.int64),
            "fn": np.zeros((2, 2), np.int64)}


def test_path_fields_are_stored_relative_to_the_record_and_read_back_absolute(tmp_path):
    data = tmp_path / "data" / "voc"
    data.mkdir(parents=True)
    ckpt = tmp_path / "weights" / "edam.safetensors"
    out = tmp_path / "lb" / "records"
    rec = _record(data_root=str(data), checkpoint=str(ckpt), cams_dir=str(tmp_path / "lb" / "maps" / "edam"),
                  pseudo_dir=None, checkpoint_sha256="0" * 64,
                  refinement={"rule": "saliency", "source": "EDAM (allenwu97/EDAM infer_cls.py)",
                              "saliency": {"dir": str(tmp_path / "sal")}})
    path = write_record(out, rec, None)
    raw = json.loads(path.read_text())
    assert raw["data_root"] == "../../data/voc"
    assert raw["checkpoint"] == "../../weights/edam.safetensors"
    assert raw["cams_dir"] == "../maps/edam"
    assert raw["refinement"]["saliency"]["dir"] == "../../sal"
    assert raw["refinement"]["source"] == "EDAM (allenwu97/EDAM infer_cls.py)"  # a citation, not a path
    assert raw["pseudo_dir"] is None and raw["checkpoint_sha256"] == "0" * 64  # identity stays the hash
    assert rec["data_root"] == str(data)  # the caller's dict is untouched
    back = read_record(path)
    for keys in (("data_root",), ("checkpoint",), ("cams_dir",), ("refinement", "saliency", "dir")):
        v: object = back
        ref: object = rec
        for k in keys:
            v, ref = v[k], ref[k]  # type: ignore[index]
        assert v == os.path.normpath(str(ref)), keys
    # moved together, the record still points at the moved data
    shutil.move(str(tmp_path / "lb"), str(tmp_path / "moved-lb"))
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved-data"))
    moved = read_record(tmp_path / "moved-lb" / "records" / path.name)
    assert moved["cams_dir"] == str(tmp_path / "moved-lb" / "maps" / "edam")


def test_relative_paths_from_the_working_directory_and_other_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "preds").mkdir()
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    assert relative_to("preds", str(out)) == "../../preds"  # relative to the working directory
    (out / "log.jsonl").write_text("{}\n")
    assert relative_to("log.jsonl", str(out)) == "log.jsonl"  # already relative to the record
    assert relative_to(str(tmp_path / "a" / "b" / "x"), str(out)) == "x"
    assert all(isinstance(k, tuple) and k for k in PATH_FIELDS)


def test_a_cloned_leaderboard_folder_rebuilds_with_its_qualitative_grid(tmp_path):
    """A leaderboard folder (records, maps, data) copied elsewhere rebuilds from the copy alone."""
    src = tmp_path / "repo" / "leaderboards" / "demo"
    root, _ = make_voc(src / "data", n=6)
    for m, q, s in (("cam", 0.35, 1), ("edam", 0.5, 2)):
        pseudo_record(root, src / "records", m, q, s)
    raw = json.loads((src / "records" / "cam-1.json").read_text())
    assert not os.path.isabs(raw["data_root"]) and not os.path.isabs(raw["cams_dir"])
    clone = tmp_path / "clone" / "leaderboards" / "demo"
    shutil.copytree(src, clone)
    shutil.rmtree(tmp_path / "repo")  # the original is gone: only the copy's own files can be used
    files = build_leaderboard([clone / "records"], clone, formats=("json",), samples=2)
    doc = json.loads((clone / "leaderboard.json").read_text())
    (g,) = doc["groups"]
    assert "grid" in g["plots"] and len(g["grid_ids"]) == 2
    assert all(f.is_file() for f in files)
    # without the data, the leaderboard still builds and says why the grid is missing
    shutil.rmtree(clone / "data")
    with pytest.warns(ReportWarning, match="no qualitative grid"):
        build_leaderboard([clone / "records"], clone / "again", formats=("json",), samples=2)
    (g,) = json.loads((clone / "again" / "leaderboard.json").read_text())["groups"]
    assert "grid" not in g["plots"] and g["notes"][0].startswith("No qualitative grid: ")


def test_a_failing_record_write_leaves_no_orphan_counts_file(tmp_path, monkeypatch):
    real = wio.os.replace

    def full_disk_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(wio.os, "replace", full_disk_on_json)
    with pytest.raises(WsssBenchError, match=r"cannot write record \(No space left on device\)") as e:
        write_record(tmp_path, _record(), _counts(), stem="run")
    assert str(tmp_path / "run.json") in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no counts, no temporary files


def test_a_failing_counts_write_leaves_no_record(tmp_path, monkeypatch):
    real = wio.os.replace

    def full_disk_on_npz(src, dst):
        if str(dst).endswith(".npz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(wio.os, "replace", full_disk_on_npz)
    with pytest.raises(WsssBenchError, match=r"cannot write per-image counts") as e:
        write_record(tmp_path, _record(), _counts(), stem="run")
    assert str(tmp_path / "run.counts.npz") in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_keeps_the_previous_record_and_counts(tmp_path, monkeypatch):
    path = write_record(tmp_path, _record(), _counts(), stem="run")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    import wsss_bench.records as records

    monkeypatch.setattr(records, "_write_synced", no_space)
    with pytest.raises(WsssBenchError, match="No space left"):
        write_record(tmp_path, _record(name="new"), _counts(), stem="run")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_record(path)["name"] == "r"


def test_writing_into_a_file_or_read_only_folder_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WsssBenchError, match="cannot write record"):
        write_record(f, _record(), _counts())
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(WsssBenchError, match="Permission denied"):
                write_record(ro, _record(), _counts())
        finally:
            ro.chmod(0o700)
    rec = write_record(tmp_path / "ok", _record(), _counts())
    assert main(["leaderboard", str(rec), "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_record_and_counts_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_record(tmp_path / "r", _record(), _counts(), stem="run")
    finally:
        os.umask(old)
    for p in (path, path.with_name("run.counts.npz")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


def test_counts_are_checked_against_the_record(tmp_path):
    path = write_record(tmp_path, _record(), _counts(), stem="run")
    rec = read_record(path)
    assert read_counts(rec)["tp"].shape == (2, 2)
    np.savez(tmp_path / "run.counts.npz", ids=np.array(["i0", "i1"]), tp=np.ones((2, 3), np.int64),
             fp=np.ones((2, 3), np.int64), fn=np.ones((2, 3), np.int64))
    with pytest.raises(WsssBenchError, match=r"expected integers of shape \(2, 2\)"):
        read_counts(rec)
    (tmp_path / "run.counts.npz").unlink()
    with pytest.raises(WsssBenchError, match="per-image counts file not found"):
        read_counts(rec)
