"""Suite chaining: a ``[[run]]``'s pseudo labels -> its segmenter (``train_seg``) -> its val record,
end to end on the synthetic set with a tiny recipe, checked against the same two steps run by hand
(``run --save-pseudo`` then ``train-seg``); and every bad ``train_seg`` key is a one-line error
naming the suite file and the table, before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from train_helpers import cli_main, write_test_recipe

from wsss_bench.data.synthetic import generate
from wsss_bench.demo import demo_manifest, weights_dir
from wsss_bench.records import read_counts, read_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("suite") / "shapes", num_images=16, seed=5, size=(40, 52))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return write_test_recipe(tmp_path_factory.mktemp("recipe") / "test-tiny.toml")


def cam_run(synth: Path, **extra: str) -> str:
    """A ``[[run]]`` table of the CAM demo model (shipped weights) with ``extra`` keys (TOML values)."""
    entry = demo_manifest()["cam"]
    keys = {"method": '"cam"', "checkpoint": json.dumps(str(weights_dir() / entry["file"])),
            "backbone": json.dumps(entry["backbone"]), **extra}
    return "[[run]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def inline(**kv: object) -> str:
    """A TOML inline table (JSON strings, numbers and booleans are TOML values)."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in kv.items()) + " }"


def write_suite(path: Path, synth: Path, *tables: str, head: str = "") -> Path:
    path.write_text(f'dataset = "synthetic"\ndata_root = {json.dumps(str(synth))}\ndevice = "cpu"\nworkers = 0\n'
                    f"{head}\n" + "\n".join(tables))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def png_digest(folder: Path, ids: list[str]) -> str:
    """The training's ``pseudo_labels_sha256``, computed independently: SHA-256 over sorted
    ``id<TAB>sha256(png)`` lines."""
    h = hashlib.sha256()
    for i in sorted(ids):
        h.update(f"{i}\t{hashlib.sha256((folder / f'{i}.png').read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_suite_chains_pseudo_labels_into_a_trained_segmenter_and_its_val_record(synth, recipe, tmp_path, capsys):
    pseudo, seg, recs = tmp_path / "pseudo" / "cam", tmp_path / "seg" / "cam", tmp_path / "records"
    suite = write_suite(
        tmp_path / "suite.toml", synth,
        cam_run(synth, save_pseudo=json.dumps(str(pseudo)), threshold='"calibrated"', name='"cam-native"',
                train_seg=inline(out=str(seg))),
        '[[run]]\nmethod = "center-prior"\nname = "floor"\ntrain_seg = false\n',
        head=f'\n[train_seg]\nrecipe = {json.dumps(str(recipe))}\nseed = 2\n')
    assert cli_main(["run", str(suite), "--out", str(recs)]) == 0
    printed = capsys.readouterr().out
    assert "iteration 6/6" in printed  # the training's own progress lines
    pseudo_rec = read_record(recs / "cam-native.json")
    final = read_record(recs / "cam-native-test-tiny.json")
    assert sorted(p.name for p in recs.glob("*.json")) == ["cam-native-test-tiny.json", "cam-native.json",
                                                           "floor.json"]
    # the run wrote its PNGs at its calibrated threshold; the segmenter trained on exactly those
    assert pseudo_rec["pseudo_threshold_rule"] == "calibrated"
    assert pseudo_rec["pseudo_threshold"] == pseudo_rec["calibrated"]["threshold"]
    train_ids = (synth / "ImageSets/Segmentation/train.txt").read_text().split()
    pl, tr = final["pipeline"], final["training"]
    assert (final["kind"], final["split"], final["dataset"]) == ("segmentation", "val", "synthetic")
    assert pl["method"] == "cam" and pl["pseudo_record"] == "cam-native"
    assert pl["pseudo_fingerprint"] == pseudo_rec["fingerprint"]
    assert pl["threshold"] == pseudo_rec["pseudo_threshold"] and pl["threshold_rule"] == "calibrated"
    assert pl["pseudo_labels_miou"] == pseudo_rec["pseudo_labels_miou"]
    assert pl["pseudo_miou"] == pseudo_rec["metrics"]["miou"]
    assert pl["pseudo_labels_sha256"] == png_digest(pseudo, train_ids)
    assert (pl["recipe"], tr["iterations"], tr["seed"], tr["split"]) == ("test-tiny", 6, 2, "train")
    assert Path(tr["model"]).parent == seg.resolve() and (seg / "train-config.json").is_file()
    val_ids = (synth / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(read_counts(final)["ids"].tolist()) == sorted(val_ids)

    # the reference: the same PNGs through `wsss-bench train-seg` by hand give the same record
    by_hand = tmp_path / "by-hand"
    assert cli_main(["train-seg", "--pseudo", str(pseudo), "--dataset", "synthetic", "--data-root", str(synth),
                     "--split", "train", "--recipe", str(recipe), "--out", str(by_hand), "--device", "cpu",
                     "--workers", "0", "--seed", "2"]) == 0
    hand = read_record(by_hand / "cam-native-test-tiny.json")
    assert hand["metrics"] == final["metrics"]
    assert hand["training"]["final_loss"] == tr["final_loss"]
    for key in ("method", "pseudo_record", "pseudo_fingerprint", "threshold", "threshold_rule", "pseudo_labels_miou",
                "pseudo_labels_sha256", "recipe", "recipe_version"):
        assert hand["pipeline"][key] == pl[key], key

    # the same suite again: the finished training is reused, not repeated
    assert cli_main(["run", str(suite), "--out", str(recs)]) == 0
    again = read_record(recs / "cam-native-test-tiny.json")
    assert again["metrics"] == final["metrics"] and again["training"]["resumed_from"] == [6]


def test_cli_device_and_workers_apply_to_the_chained_training(synth, recipe, tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", synth, cam_run(
        synth, save_pseudo=json.dumps(str(tmp_path / "p")),
        train_seg=inline(recipe=str(recipe), iterations=2, device="cuda")))
    # the table asks for cuda (an error on a machine without one); --device cpu on the command line
    # applies to every run and its training
    assert cli_main(["run", str(suite), "--out", str(tmp_path / "r"), "--device", "cpu", "--workers", "0"]) == 0
    final = read_record(tmp_path / "r" / "cam-native-test-tiny.json")
    assert final["environment"]["device"] == "cpu" and final["training"]["iterations"] == 2
    assert final["training"]["recipe_overrides"] == {"iterations": 2}


def _foreign_init(tmp_path: Path) -> Path:
    init = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), init)
    return init


@pytest.mark.parametrize("run_keys, head, message", [
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, iterashuns = 3 }"}, "",
     "unknown key 'iterashuns' in {suite} [[run]] #2 train_seg (did you mean 'iterations'?)"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, iterations = \"3\" }"}, "",
     "key 'iterations' of {suite} [[run]] #2 train_seg must be an integer, got '3'"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, iterations = 0 }"}, "",
     "key 'iterations' of {suite} [[run]] #2 train_seg must be >= 1, got 0"),
    ({"save_pseudo": "@P@", "train_seg": "\"deeplabv2-voc\""}, "",
     "{suite} [[run]] #2 train_seg must be a table of KEY = VALUE (or false), got 'deeplabv2-voc'"),
    ({"save_pseudo": "@P@", "train_seg": "{ out = @O@ }"}, "",
     "{suite} [[run]] #2 train_seg needs a recipe"),
    ({"train_seg": "{ recipe = @R@ }"}, "",
     "{suite} [[run]] #2 train_seg needs save_pseudo = \"DIR\" in its [[run]]"),
    ({"save_pseudo": "@P@", "limit": "3", "train_seg": "{ recipe = @R@ }"}, "",
     "{suite} [[run]] #2 train_seg: the run has limit = 3"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = \"deeplabv2-voc\" }"}, "",
     "{suite} [[run]] #2 train_seg: recipe 'deeplabv2-voc' starts from ImageNet weights: give init"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = \"no-such-recipe\" }"}, "",
     "{suite} [[run]] #2 train_seg: unknown recipe 'no-such-recipe'"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, micro_batch = 3 }"}, "",
     "{suite} [[run]] #2 train_seg: recipe test-tiny: batch 4 is not a multiple of micro_batch 3"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, val_split = \"test\" }"}, "",
     "{suite} [[run]] #2 train_seg: unknown synthetic split 'test'"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, precision = \"fp16\" }"}, "",
     "{suite} [[run]] #2 train_seg: fp16 autocast needs a CUDA device"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, out = @P@ }"}, "",
     "{suite} [[run]] #2 train_seg: out"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, init = @I@ }"}, "",
     "{suite} [[run]] #2 train_seg: checkpoint does not match the deeplabv2"),
    ({"save_pseudo": "@P@", "train_seg": "{ recipe = @R@, init = \"missing.pth\" }"}, "",
     "{suite} [[run]] #2 train_seg: init file not found"),
    ({"save_pseudo": "@P@"}, "[train_seg]\nrecipie = 1\n",
     "unknown key 'recipie' in {suite} [train_seg] (did you mean 'recipe'?)"),
    ({"save_pseudo": "@P@"}, "train_seg = 3\n",
     "{suite} [train_seg] must be a table of KEY = VALUE, got 3"),
])
def test_bad_train_seg_tables_are_one_line_errors_before_any_work(synth, recipe, tmp_path, capsys, run_keys,
                                                                   head, message):
    pseudo, first, out = tmp_path / "pseudo", tmp_path / "pseudo-first", tmp_path / "records"
    subst = {"@P@": json.dumps(str(pseudo)), "@R@": json.dumps(str(recipe)), "@O@": json.dumps(str(tmp_path / "o")),
             "@I@": json.dumps(str(_foreign_init(tmp_path)))}
    keys = {}
    for k, v in run_keys.items():
        for name, value in subst.items():
            v = v.replace(name, value)
        keys[k] = v
    # a valid run first: nothing of it may run either
    ok = f'[[run]]\nmethod = "center-prior"\nsave_pseudo = {json.dumps(str(first))}\ntrain_seg = false\n'
    suite = write_suite(tmp_path / "suite.toml", synth, ok, cam_run(synth, **keys), head=head)
    assert cli_main(["run", str(suite), "--out", str(out)]) == 2
    assert message.format(suite=suite) in one_error_line(capsys)
    assert not out.exists() and not pseudo.exists() and not first.exists()


def test_two_trainings_with_one_output_folder_are_refused(synth, recipe, tmp_path, capsys):
    seg = str(tmp_path / "seg")
    tables = [cam_run(synth, save_pseudo=json.dumps(str(tmp_path / f"p{i}")), name=f'"r{i}"',
                      train_seg=inline(recipe=str(recipe), out=seg)) for i in (1, 2)]
    suite = write_suite(tmp_path / "suite.toml", synth, *tables)
    assert cli_main(["run", str(suite), "--out", str(tmp_path / "records")]) == 2
    line = one_error_line(capsys)
    assert f"{suite} [[run]] #2 train_seg: out {tmp_path / 'seg'} is also the out of {suite} [[run]] #1" in line
    assert not (tmp_path / "records").exists() and not (tmp_path / "p1").exists()


def test_a_foreign_non_empty_output_folder_is_refused(synth, recipe, tmp_path, capsys):
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / "notes.txt").write_text("mine")
    suite = write_suite(tmp_path / "suite.toml", synth, cam_run(
        synth, save_pseudo=json.dumps(str(tmp_path / "p")),
        train_seg=inline(recipe=str(recipe), out=str(seg))))
    assert cli_main(["run", str(suite), "--out", str(tmp_path / "records")]) == 2
    assert "holds no wsss-bench training run" in one_error_line(capsys)
    assert sorted(p.name for p in seg.iterdir()) == ["notes.txt"]
