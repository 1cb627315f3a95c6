"""``wsss-bench train-seg`` end to end (tiny recipe) and its bad inputs: one-line errors, exit code 2,
nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from train_helpers import cli_main, write_test_recipe

from wsss_bench.data.synthetic import generate
from wsss_bench.inference import RunConfig, run_method
from wsss_bench.records import read_counts, read_record
from wsss_bench.training.data import PSEUDO_JSON, pseudo_json, write_pseudo_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cli") / "shapes", num_images=12, seed=4, size=(40, 52))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return write_test_recipe(tmp_path_factory.mktemp("recipe") / "test-tiny.toml")


@pytest.fixture
def gt_pseudo(synth, tmp_path):
    d = tmp_path / "pseudo-gt"
    shutil.copytree(synth / "SegmentationClass", d)
    return d


def train_png(synth: Path, pseudo: Path, k: int) -> Path:
    return pseudo / f"{(synth / 'ImageSets/Segmentation/train.txt').read_text().split()[k]}.png"


def args(synth: Path, pseudo: Path, recipe: Path, out: Path, *extra: str) -> list[str]:
    return ["train-seg", "--pseudo", str(pseudo), "--dataset", "synthetic", "--data-root", str(synth),
            "--split", "train", "--recipe", str(recipe), "--out", str(out), "--device", "cpu", "--workers", "0",
            *extra]


def test_train_seg_end_to_end_writes_a_record_with_its_pipeline(synth, recipe, tmp_path, capsys):
    # the pseudo labels of a real run (the centre prior), with the provenance file beside them
    run = run_method(RunConfig(method="center-prior", data_root=str(synth), split="train", device="cpu",
                               out=str(tmp_path / "records"), save_pseudo=str(tmp_path / "cp"), name="center-prior"))
    pseudo_rec = run.record
    write_pseudo_json(tmp_path / "cp", pseudo_json(pseudo_rec, pseudo_rec["best_threshold"], "best",
                                                   record_file=run.record_path))
    out = tmp_path / "seg"
    assert cli_main(args(synth, tmp_path / "cp", recipe, out, "--name", "cp-seg")) == 0
    printed = capsys.readouterr().out
    assert "iteration 6/6" in printed and "val mIoU" in printed  # plain progress lines (not a terminal)
    rec = read_record(out / "cp-seg.json")
    assert rec["kind"] == "segmentation" and rec["split"] == "val" and rec["segmenter"] == "deeplabv2"
    pl, tr = rec["pipeline"], rec["training"]
    assert pl["method"] == "center-prior" and pl["pseudo_record"] == "center-prior"
    assert pl["pseudo_fingerprint"] == pseudo_rec["fingerprint"]
    assert pl["pseudo_miou"] == pseudo_rec["metrics"]["miou"] and pl["threshold"] == pseudo_rec["best_threshold"]
    assert (pl["recipe"], pl["recipe_version"], pl["segmenter"]) == ("test-tiny", 1, "deeplabv2")
    assert (tr["iterations"], tr["world_size"], tr["global_batch"], tr["precision"]) == (6, 1, 4, "fp32")
    assert tr["init_sha256"] is None and tr["seconds"] > 0 and tr["resumed_from"] == []
    log = [json.loads(line) for line in Path(tr["log"]).read_text().splitlines()]
    assert [e["iteration"] for e in log] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(e["loss"]) for e in log)
    assert tr["final_loss"] == log[-1]["loss"]
    with Image.open(tr["loss_plot"]) as im:
        assert im.format == "PNG" and im.size[0] > 300
    # the weights load as an ordinary segmenter checkpoint; the record's counts are per val image
    assert rec["checkpoint"] == tr["model"] and Path(tr["model"]).is_file()
    counts = read_counts(rec)
    val_ids = (synth / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(counts["ids"].tolist()) == sorted(val_ids)
    # the same command again: the finished training is reused, the record is the same
    before = (out / "cp-seg.json").read_text()
    assert cli_main(args(synth, tmp_path / "cp", recipe, out, "--name", "cp-seg")) == 0
    assert "resuming from iteration 6" in capsys.readouterr().out
    again = json.loads((out / "cp-seg.json").read_text())
    assert again["metrics"] == json.loads(before)["metrics"] and again["training"]["resumed_from"] == [6]


def test_pseudo_record_option_reads_the_run_record(synth, recipe, gt_pseudo, tmp_path):
    rec_file = tmp_path / "r.json"
    rec_file.write_text(json.dumps({"kind": "pseudo_label", "name": "cam-native", "method": "cam",
                                    "fingerprint": "ab" * 32, "metrics": {"miou": 0.3}, "dataset": "synthetic"}))
    out = tmp_path / "o"
    assert cli_main(args(synth, gt_pseudo, recipe, out, "--pseudo-record", str(rec_file),
                         "--iterations", "2")) == 0
    rec = json.loads((out / "cam-native-test-tiny.json").read_text())
    assert rec["pipeline"]["method"] == "cam" and rec["pipeline"]["threshold"] is None
    assert rec["training"]["recipe_overrides"] == {"iterations": 2} and rec["training"]["iterations"] == 2


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_missing_pseudo_label_is_exit_2_and_nothing_written(synth, recipe, gt_pseudo, tmp_path, capsys):
    victim = train_png(synth, gt_pseudo, 3)
    victim.unlink()
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out)) == 2
    line = one_error_line(capsys)
    assert str(victim) in line and "pseudo label missing" in line
    assert not out.exists()


def test_wrong_size_pseudo_label_is_exit_2(synth, recipe, gt_pseudo, tmp_path, capsys):
    victim = train_png(synth, gt_pseudo, 1)
    Image.fromarray(np.zeros((7, 9), dtype=np.uint8)).save(victim)
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out)) == 2
    line = one_error_line(capsys)
    assert str(victim) in line and "pseudo label is 9x7 but image" in line
    assert not out.exists()


def test_value_outside_the_class_set_is_exit_2(synth, recipe, gt_pseudo, tmp_path, capsys):
    victim = train_png(synth, gt_pseudo, 0)
    lab = np.asarray(Image.open(victim)).copy()
    lab[5, 5] = 6  # synthetic has classes 0..5
    Image.fromarray(lab).save(victim)
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out)) == 2
    line = one_error_line(capsys)
    assert str(victim) in line and "value 6 is outside the class set (0..5, 255 ignored)" in line
    assert not out.exists()


def test_wrong_architecture_init_is_exit_2(synth, recipe, gt_pseudo, tmp_path, capsys):
    init = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), init)
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out, "--init", str(init))) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {init}: checkpoint does not match the deeplabv2") and "missing keys" in line
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--segmenter", "deeplabv3plus"], "trains segmenter 'deeplabv2', not 'deeplabv3plus'"),
    (["--micro-batch", "3"], "batch 4 is not a multiple of micro_batch 3"),
    (["--precision", "fp16"], "fp16 autocast needs a CUDA device"),
    (["--val-split", "test"], "unknown synthetic split 'test'"),
])
def test_bad_options_are_exit_2(synth, recipe, gt_pseudo, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out, *extra)) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_pseudo_labels_of_another_dataset_are_refused(synth, recipe, gt_pseudo, tmp_path, capsys):
    (gt_pseudo / PSEUDO_JSON).write_text(json.dumps({"format": "wsss-bench-pseudo", "version": 1, "dataset": "voc"}))
    assert cli_main(args(synth, gt_pseudo, recipe, tmp_path / "out")) == 2
    assert "the pseudo labels were made on voc, not synthetic" in one_error_line(capsys)


def test_a_different_run_in_the_same_folder_is_refused(synth, recipe, gt_pseudo, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(args(synth, gt_pseudo, recipe, out, "--iterations", "2")) == 0
    kept = sorted(p.name for p in out.rglob("*"))
    assert cli_main(args(synth, gt_pseudo, recipe, out, "--iterations", "2", "--seed", "3")) == 2
    line = one_error_line(capsys)
    assert "holds a different training run (differs in seed)" in line
    assert sorted(p.name for p in out.rglob("*")) == kept
    assert cli_main(args(synth, gt_pseudo, recipe, out, "--iterations", "2", "--seed", "3", "--fresh")) == 0
    cfg = json.loads((out / "train-config.json").read_text())
    assert cfg["identity"]["seed"] == 3
