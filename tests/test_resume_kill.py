"""A run killed with SIGKILL resumes from its map cache to the uninterrupted record; a truncated or
otherwise unreadable cache entry is reported and recomputed, never used."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cam_helpers import write_tiny_cam_checkpoint

from wsss_bench.cli import main
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.inference import RunConfig, run_method
from wsss_bench.io import load_cam_file

SAME_KEYS = ("metrics", "sweep", "best_threshold", "best_threshold_index", "calibrated", "native",
             "fingerprint", "num_images", "checkpoint_sha256")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("kill") / "shapes", num_images=16, seed=11, size=(40, 56))


@pytest.fixture(scope="module")
def cam_ckpt(tmp_path_factory):
    return write_tiny_cam_checkpoint(tmp_path_factory.mktemp("ckpt") / "cam_tiny.pth", seed=2)


def cli_args(synth: Path, ckpt: Path, out: Path) -> list[str]:
    return ["run", "--method", "cam", "--backbone", "resnet-tiny", "--checkpoint", str(ckpt),
            "--data-root", str(synth), "--settings", "standard", "--scales", "1.0,0.5", "--device", "cpu", "--workers", "0", "--out", str(out), "--name", "cam"]


def read(out: Path) -> dict:
    return json.loads((out / "cam.json").read_text())


def test_sigkilled_run_resumes_to_the_uninterrupted_record(synth, cam_ckpt, tmp_path):
    ids = (synth / "ImageSets/Segmentation/train.txt").read_text().split()
    cache, out_killed, out_full = tmp_path / "cams", tmp_path / "killed", tmp_path / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wsss_bench", *cli_args(synth, cam_ckpt, out_killed),
                             "--save-cams", str(cache)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len([p for p in cache.glob("*.npz") if not p.name.startswith(".")]) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished (or died) before it could be killed: " + \
            proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.stem for p in cache.glob("*.npz") if not p.name.startswith("."))
    assert 3 <= len(done) < len(ids), "killed mid-run: some but not all maps cached"
    assert not (out_killed / "cam.json").exists(), "a killed run writes no record"
    for i in done:  # every entry under its final name is whole (written to a temporary name, renamed)
        classes, scores = load_cam_file(cache / f"{i}.npz")
        assert scores.shape[0] == classes.size > 0

    # damage one finished entry as a crash of the disk might, then resume (the default with
    # --save-cams) in a fresh process; the user is told which entry is recomputed
    victim = cache / f"{done[1]}.npz"
    victim.write_bytes(victim.read_bytes()[:50])
    stale = cache / f".{ids[-1]}.k3x9q_ab.tmp.npz"  # what a kill during a write leaves behind
    stale.write_bytes(b"PK\x03\x04 half an archive")
    res = subprocess.run([sys.executable, "-m", "wsss_bench", *cli_args(synth, cam_ckpt, out_killed),
                          "--save-cams", str(cache)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recomputing unusable cache entry" in res.stderr and str(victim) in res.stderr
    assert main(cli_args(synth, cam_ckpt, out_full)) == 0
    resumed, full = read(out_killed), read(out_full)
    assert resumed["cache"]["cached"] == len(done) - 1
    assert resumed["cache"]["computed"] == len(ids) - len(done) + 1
    assert resumed["cache"]["recomputed_corrupt"] == 1
    for key in SAME_KEYS:
        assert resumed[key] == full[key], key
    # stale temporary files (the planted one, any the kill left) are cleared when the cache is reopened
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"{i}.npz" for i in ids] + ["wsss-bench-cache.json"])



DAMAGES = ("truncate", "garbage", "empty", "nan", "wrong-classes", "wrong-size")


def damage_entry(path: Path, how: str) -> None:
    good = path.read_bytes()
    if how == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif how == "garbage":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 3)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as z:
            classes, scores = z["classes"], z["scores"].copy()
        if how == "nan":
            scores[0, 0, 0] = np.nan
        elif how == "wrong-size":
            scores = scores[:, :-1]
        else:  # other classes than the image has
            classes = np.asarray([c % 5 + 1 for c in classes])
            if set(classes.tolist()) == set(np.load(path)["classes"].tolist()):
                classes = classes[:1]
                scores = scores[:1]
        np.savez_compressed(path, classes=classes, scores=scores)


def test_damaged_cache_entries_are_reported_and_recomputed(synth, cam_ckpt, tmp_path):
    base = dict(method="cam", backbone="resnet-tiny", checkpoint=str(cam_ckpt), data_root=str(synth),
                settings="standard", scales=(1.0,), flip=False, device="cpu", limit=6, name="cam")
    cache = tmp_path / "cams"
    first = run_method(RunConfig(**base, out=str(tmp_path / "a"), save_cams=str(cache))).record
    assert first["cache"] == {"cached": 0, "computed": 6, "recomputed_corrupt": 0}
    entries = sorted(cache.glob("*.npz"))
    for k, how in enumerate(DAMAGES):
        victim = entries[k % len(entries)]
        good = victim.read_bytes()
        damage_entry(victim, how)
        assert victim.read_bytes() != good
        with pytest.warns(RuntimeWarning, match=rf"recomputing unusable cache entry: .*{victim.name}"):
            again = run_method(RunConfig(**base, out=str(tmp_path / how), save_cams=str(cache))).record
        assert again["cache"] == {"cached": 5, "computed": 1, "recomputed_corrupt": 1}, how
        for key in SAME_KEYS:
            assert again[key] == first[key], (how, key)
        # the entry was rewritten: the same maps as the first run wrote
        classes, scores = load_cam_file(victim)
        with np.load(io.BytesIO(good)) as z:
            np.testing.assert_array_equal(classes, z["classes"])
            np.testing.assert_array_equal(scores, z["scores"].astype(np.float32))
    # --fresh ignores the cache: everything is recomputed, same record
    fresh = run_method(RunConfig(**base, out=str(tmp_path / "f"), save_cams=str(cache), fresh=True)).record
    assert fresh["cache"] == {"cached": 0, "computed": 6, "recomputed_corrupt": 0}
    for key in SAME_KEYS:
        assert fresh[key] == first[key], key


def test_folder_of_foreign_npz_maps_is_not_taken_for_a_cache(synth, cam_ckpt, tmp_path):
    """Maps without our manifest (another tool's, another dataset's) are never read as cache hits."""
    base = dict(method="cam", backbone="resnet-tiny", checkpoint=str(cam_ckpt), data_root=str(synth),
                settings="standard", scales=(1.0,), flip=False, device="cpu", limit=2, name="cam")
    cache = tmp_path / "cams"
    run_method(RunConfig(**base, out=str(tmp_path / "a"), save_cams=str(cache)))
    (cache / "wsss-bench-cache.json").unlink()
    kept = {p.name: p.read_bytes() for p in cache.glob("*.npz")}
    with pytest.raises(WsssBenchError, match="not a wsss-bench map cache") as e:
        run_method(RunConfig(**base, out=str(tmp_path / "b"), save_cams=str(cache)))
    assert str(cache) in str(e.value) and not (tmp_path / "b").exists()
    assert {p.name: p.read_bytes() for p in cache.glob("*.npz")} == kept  # nothing touched
    # --fresh rebuilds the folder as a cache
    rec = run_method(RunConfig(**base, out=str(tmp_path / "c"), save_cams=str(cache), fresh=True)).record
    assert rec["cache"]["computed"] == 2 and (cache / "wsss-bench-cache.json").is_file()
