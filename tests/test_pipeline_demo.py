"""``wsss-bench run --with-segmenter``: the demo's final stage. Each method's native run writes its
pseudo labels at its calibrated threshold, the tiny recipe trains a segmenter on them (a few
iterations here), and the leaderboard's pipeline table shows pseudo-label mIoU beside final mIoU.
Parallel execution gives the serial records; the progress total is known at the start."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
import torch

from wsss_bench.data import build_dataset
from wsss_bench.demo import DEMO_SET, demo_runs, demo_trainings, execute_runs, pseudo_threshold_rule, run_demo
from wsss_bench.io import read_index_png
from wsss_bench.metrics.confusion import ConfusionEvaluator
from wsss_bench.metrics.functional import is_calibration_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ["cam", "ad-cam"]
ITERATIONS = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-seg") / "demo"
    records = run_demo(out, images=16, device="cpu", methods=METHODS, quiet=True, jobs=2, with_segmenter=True,
                       segmenter_iterations=ITERATIONS)
    return out, {r["name"]: r for r in records}


def test_each_native_run_and_the_centre_prior_get_a_segmenter_trained_on_their_own_pseudo_labels(demo):
    out, by_name = demo
    pseudo_runs = [f"{m}-native" for m in METHODS] + ["center-prior"]
    assert set(by_name) == ({f"{m}-{s}" for m in METHODS for s in ("native", "standard")} | {"center-prior"}
                            | {f"{r}-tiny-synthetic" for r in pseudo_runs})
    data = out / "data" / f"shapes-16-seed{DEMO_SET['seed']}"
    train = build_dataset("synthetic", data, "train")
    rule = pseudo_threshold_rule(data)
    assert rule == ("calibrated" if 0 < sum(map(is_calibration_id, train.ids)) < len(train.ids) else "best")
    for name in pseudo_runs:
        run, seg = by_name[name], by_name[f"{name}-tiny-synthetic"]
        # the PNGs are the run's at its calibrated (or best) threshold, scored exactly as written
        assert run["pseudo_threshold_rule"] == rule
        t = run["calibrated"]["threshold"] if rule == "calibrated" else run["best_threshold"]
        assert run["pseudo_threshold"] == t
        pseudo = out / "pseudo" / name
        ev = ConfusionEvaluator(train.classes.num_classes)
        for i in train.ids:
            ev.update(torch.from_numpy(read_index_png(pseudo / f"{i}.png")), torch.from_numpy(train.load_mask(i)))
        assert run["pseudo_labels_miou"] == pytest.approx(ev.metrics()["miou"], abs=1e-12)
        # the segmenter names them as its provenance and was scored on val
        pl, tr = seg["pipeline"], seg["training"]
        assert (seg["kind"], seg["split"]) == ("segmentation", "val")
        assert pl["pseudo_record"] == name and pl["method"] == run["method"]
        assert pl["pseudo_fingerprint"] == run["fingerprint"] and pl["threshold"] == t
        assert pl["pseudo_labels_miou"] == run["pseudo_labels_miou"] and pl["recipe"] == "tiny-synthetic"
        assert tr["iterations"] == ITERATIONS and tr["recipe_overrides"] == {"iterations": ITERATIONS}
        h = hashlib.sha256()
        for i in sorted(train.ids):
            h.update(f"{i}\t{hashlib.sha256((pseudo / f'{i}.png').read_bytes()).hexdigest()}\n".encode())
        assert pl["pseudo_labels_sha256"] == h.hexdigest()
        assert Path(tr["model"]).parent == (out / "segmenters" / name).resolve()
        assert (out / "records" / f"{name}-tiny-synthetic.json").is_file()
    # the standard-settings runs write no pseudo labels and train nothing
    for m in METHODS:
        assert by_name[f"{m}-standard"].get("pseudo_dir") is None


def test_the_leaderboard_shows_pseudo_label_miou_beside_final_miou(demo):
    out, by_name = demo
    board = json.loads((out / "leaderboard.json").read_text())
    text = json.dumps(board)
    md = (out / "README.md").read_text()
    for name in [f"{m}-native" for m in METHODS] + ["center-prior"]:
        seg = by_name[f"{name}-tiny-synthetic"]
        assert f"{100 * seg['metrics']['miou']:.1f}" in md
        assert name in text
    assert "--with-segmenter" in md  # the command that reproduces it


def test_parallel_demo_with_segmenters_gives_the_serial_records_and_a_progress_total_known_up_front(
        tmp_path, monkeypatch):
    from wsss_bench.commands import _ui
    from wsss_bench.data.synthetic import ensure_synthetic

    seen: list[tuple[str, int | None, list[int]]] = []

    @contextlib.contextmanager
    def fake_bar(description, total=None, unit="images"):
        updates: list[int] = []
        seen.append((description, total, updates))
        yield lambda done, total_=None: updates.append(done)

    monkeypatch.setattr(_ui, "progress_bar", fake_bar)
    data = ensure_synthetic(tmp_path / "data", 12, DEMO_SET["seed"], DEMO_SET["size"])
    out = {}
    for jobs in (1, 2):
        runs = demo_runs(data, tmp_path / f"j{jobs}", device="cpu", methods=["cam"], with_segmenter=True)
        trainings = demo_trainings(runs, tmp_path / f"j{jobs}", device="cpu", iterations=2)
        assert sorted(trainings) == ["cam-native", "center-prior"]
        out[jobs] = execute_runs(runs, jobs, trainings)
        assert [r["name"] for r in out[jobs]] == [c.name for c in runs] + [f"{k}-tiny-synthetic" for k in trainings]
    for s, p in zip(out[1], out[2], strict=True):
        assert p["metrics"] == s["metrics"], s["name"]
        if s["kind"] == "segmentation":
            assert p["training"]["final_loss"] == s["training"]["final_loss"]
    # 3 runs of 9 train images; 2 trainings of 2 iterations x 8 crops + 3 val images
    n_train = len(build_dataset("synthetic", data, "train").ids)
    n_val = len(build_dataset("synthetic", data, "val").ids)
    assert len(seen) == 2
    for description, total, updates in seen:
        assert "3 runs, 2 segmenters" in description
        assert total == 3 * n_train + 2 * (2 * 8 + n_val)
        assert updates and updates[-1] == total and updates == sorted(updates)


def test_with_segmenter_is_a_demo_only_option(tmp_path, capsys):
    from wsss_bench.cli import main

    assert main(["run", "--method", "center-prior", "--data-root", str(tmp_path), "--with-segmenter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--with-segmenter applies to the demo only" in err[0]
