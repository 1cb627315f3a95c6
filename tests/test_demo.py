"""The embedded demo: shipped weights, end-to-end run, floor margin, leaderboard files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from wsss_bench.data.classes import SYNTHETIC
from wsss_bench.demo import DEMO_SET, demo_manifest, run_demo, weights_dir
from wsss_bench.demo.train import DEMO_MODELS, TRAIN_SET
from wsss_bench.methods.registry import load_method

#: The issue's floor: every method's best-threshold mIoU at native settings must clear the centre
#: prior by this many mIoU points on the demo set.
FLOOR_MARGIN = 0.10


def test_every_demo_model_is_shipped_with_its_sha256_seed_and_command():
    manifest = demo_manifest()
    assert sorted(manifest) == sorted(DEMO_MODELS)
    total = 0
    for name, entry in manifest.items():
        path = weights_dir() / entry["file"]
        data = path.read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["seed"] == 0
        assert entry["command"].startswith("wsss-bench demo train ") and "--seed 0" in entry["command"]
        assert entry["backbone"] == DEMO_MODELS[name].backbone
        assert entry["objective"] == DEMO_MODELS[name].objective
    assert total < 8 * 2**20  # "a few MB in total"


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_shipped_weights_load_strictly_through_the_adapter_loader(name):
    entry = demo_manifest()[name]
    adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=entry["backbone"])
    sha = adapter.load_checkpoint(str(weights_dir() / entry["file"]))
    assert sha == entry["sha256"]
    # every tensor of the model equals the file's (the strict load really used these values)
    from safetensors.torch import load_file

    state = load_file(str(weights_dir() / entry["file"]))
    own = adapter.model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_training_set_is_not_the_demo_set():
    assert TRAIN_SET["seed"] != DEMO_SET["seed"]


#: Methods whose shipped demo weights do NOT yet clear the floor by FLOOR_MARGIN (measured, see the
#: docs/demo.md); their floor check is an expected failure (strict: it flags when they do).
BELOW_FLOOR: dict[str, str] = {}


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    # the whole demo set, as `wsss-bench run` scores it: the floor margin is the criterion on
    # that set, and a subset's floor and scores differ from it by a few tenths of a point
    records = run_demo(out, device="cpu", quiet=True)
    return out, {r["name"]: r for r in records}


def test_demo_runs_every_method_at_both_settings_and_writes_the_leaderboard(demo_out):
    out, by_name = demo_out
    expected = {f"{m}-{s}" for m in DEMO_MODELS for s in ("native", "standard")} | {"center-prior"}
    assert set(by_name) == expected
    n_eval = sum(1 for i in range(DEMO_SET["num_images"]) if (i + 1) % 4 != 0)  # the generator's train split
    for rec in by_name.values():
        assert rec["num_images"] == n_eval
        assert 0.0 <= rec["metrics"]["miou"] <= 1.0
    on_disk = {p.stem for p in (out / "records").glob("*.json")}
    assert on_disk >= expected
    for f in ("README.md", "index.html", "leaderboard.csv", "per_class.csv", "leaderboard.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert list((out / "plots").glob("*.png"))
    text = (out / "leaderboard.json").read_text()
    for name in [*DEMO_MODELS, "center-prior"]:
        assert name in text


def test_standard_runs_reuse_the_native_maps_only_where_the_settings_are_the_same(demo_out):
    from wsss_bench.inference import RunConfig, resolve_settings

    _, by_name = demo_out
    for name in DEMO_MODELS:
        native, standard = by_name[f"{name}-native"], by_name[f"{name}-standard"]
        adapter = load_method(name)(SYNTHETIC.num_foreground, backbone=native["backbone"])
        same = (resolve_settings(adapter, RunConfig(method=name, settings="native"))
                == resolve_settings(adapter, RunConfig(method=name, settings="standard")))
        n = native["num_images"]
        assert native["cache"]["computed"] == n and native["cache"]["cached"] == 0
        if same:  # read back from the native run's map cache: the same numbers, nothing recomputed
            assert standard["cache"]["cached"] == n and standard["cache"]["computed"] == 0, name
            assert standard["metrics"] == native["metrics"], name
            assert standard["sweep"] == native["sweep"], name
        else:
            assert standard["cache"]["computed"] == n, name
    # AD-CAM's native settings are the standard ones; CAM's differ since protocol version 2 (IRN
    # upsamples each scale's map to a stride-padded size and crops)
    assert {n for n in DEMO_MODELS if by_name[f"{n}-standard"]["cache"]["cached"]} == {"ad-cam"}


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=BELOW_FLOOR[m])) if m in BELOW_FLOOR else m
    for m in sorted(DEMO_MODELS)])
def test_method_clears_the_centre_prior_by_ten_points(demo_out, name):
    _, by_name = demo_out
    floor = by_name["center-prior"]["metrics"]["miou"]
    assert 0.0 < floor < 1.0
    miou = by_name[f"{name}-native"]["metrics"]["miou"]
    assert miou >= floor + FLOOR_MARGIN, (name, miou, floor)


def test_demo_train_writes_loadable_weights_and_a_manifest_entry(tmp_path: Path, monkeypatch):
    import dataclasses

    from wsss_bench.cli import main
    from wsss_bench.demo import train as demo_train

    small = dataclasses.replace(DEMO_MODELS["cam"], steps=2, train_size=48, sizes=(32, 48), batch=4)
    monkeypatch.setitem(demo_train.DEMO_MODELS, "cam", small)
    monkeypatch.setattr(demo_train, "TRAIN_SET", {"num_images": 8, "seed": 1234, "size": (48, 64)})
    out = tmp_path / "w"
    rc = main(["demo", "train", "--out", str(out), "--seed", "3", "--method", "cam",
               "--data-dir", str(tmp_path / "data")])
    assert rc in (0, None)
    entry = json.loads((out / "manifest.json").read_text())["cam"]
    data = (out / "cam.safetensors").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["seed"] == 3 and entry["steps"] == 2 and entry["sizes"] == [32, 48]
    assert entry["command"] == f"wsss-bench demo train --out {out} --seed 3"
    adapter = load_method("cam")(SYNTHETIC.num_foreground, backbone=entry["backbone"])
    assert adapter.load_checkpoint(str(out / "cam.safetensors")) == entry["sha256"]


def test_parallel_runs_give_the_serial_records_and_order(tmp_path: Path, one_torch_thread):
    import dataclasses

    from wsss_bench.data.synthetic import ensure_synthetic
    from wsss_bench.demo import demo_runs, execute_runs

    data = ensure_synthetic(tmp_path / "data", 12, DEMO_SET["seed"], DEMO_SET["size"])
    serial = execute_runs(demo_runs(data, tmp_path / "a", device="cpu", methods=["ad-cam", "more"]), jobs=1)
    runs = demo_runs(data, tmp_path / "b", device="cpu", methods=["ad-cam", "more"])
    parallel = execute_runs(runs, jobs=2)
    assert [r["name"] for r in parallel] == [c.name for c in runs] == [r["name"] for r in serial]
    for s, p in zip(serial, parallel, strict=True):
        assert p["sweep"] == s["sweep"] and p["metrics"] == s["metrics"], s["name"]
    # ad-cam-standard read ad-cam-native's maps (the same settings), so it ran after it
    by_name = {r["name"]: r for r in parallel}
    assert by_name["ad-cam-standard"]["cache"]["cached"] == by_name["ad-cam-native"]["num_images"]
    # a failing run stops the suite with its one-line error (file and problem), not a traceback
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    runs = demo_runs(data, tmp_path / "c", device="cpu", methods=["cam"])
    runs[0] = dataclasses.replace(runs[0], checkpoint=str(bad))
    from wsss_bench.errors import WsssBenchError

    with pytest.raises(WsssBenchError, match="bad.safetensors"):
        execute_runs(runs, jobs=2)
