"""Bad input anywhere gives one line on stderr naming the file (or key), exit code 2, and no record.

Each case breaks one thing in a fresh copy of a small synthetic set (or hands over a bad checkpoint,
map file or suite file) and runs the real command line through ``wsss_bench.cli.main``.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cam_helpers import write_tiny_cam_checkpoint
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import load_cam_file, load_state_dict
from wsss_bench.methods.cam import CAMAdapter


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("bad") / "shapes", num_images=8, seed=4, size=(40, 56))


@pytest.fixture
def synth(pristine, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(pristine, root)
    return root


@pytest.fixture(scope="module")
def cam_ckpt(tmp_path_factory):
    return write_tiny_cam_checkpoint(tmp_path_factory.mktemp("ckpt") / "cam_tiny.pth", seed=3)


def train_ids(root: Path) -> list[str]:
    return (root / "ImageSets/Segmentation/train.txt").read_text().split()


def fails_cleanly(args: list[str], capsys, names: str | Path, out: Path, *more: str) -> str:
    """Run the CLI; assert exit 2, exactly one 'error:' line naming ``names``, no record under ``out``."""
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line and len(line) < 600, line
    assert str(names) in line, line
    for m in more:
        assert m in line, line
    written = sorted(p.name for p in out.rglob("*") if p.suffix in (".json", ".npz")) if out.exists() else []
    assert written == [], written
    return line


def run_args(root: Path, out: Path, *extra: str, method: str = "center-prior", workers: int = 0) -> list[str]:
    return ["run", "--method", method, "--data-root", str(root), "--out", str(out), "--device", "cpu",
            "--workers", str(workers), *extra]


# -- images and masks -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_names_the_file(synth, tmp_path, capsys, workers):
    # also through DataLoader worker processes (the CLI default), whose errors arrive re-wrapped by torch
    bad = synth / "JPEGImages" / f"{train_ids(synth)[2]}.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(64))
    fails_cleanly(run_args(synth, tmp_path / "o", workers=workers), capsys, bad, tmp_path / "o", "cannot decode")


def test_truncated_jpeg_names_the_file(synth, tmp_path, capsys):
    bad = synth / "JPEGImages" / f"{train_ids(synth)[0]}.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, bad, tmp_path / "o")


def test_corrupt_png_mask_names_the_file(synth, tmp_path, capsys):
    bad = synth / "SegmentationClass" / f"{train_ids(synth)[1]}.png"
    raw = bad.read_bytes()
    bad.write_bytes(raw[:60] + bytes(len(raw) - 60))  # header intact, image data zeroed
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, bad, tmp_path / "o")


def _rewrite_mask(path: Path, mask: np.ndarray, mode: str = "P") -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette(list(range(256)) * 3)
    elif mode == "RGB":
        im = im.convert("RGB")
    im.save(path)


def test_mask_of_the_wrong_size_names_the_mask(synth, tmp_path, capsys):
    bad = synth / "SegmentationClass" / f"{train_ids(synth)[3]}.png"
    with Image.open(bad) as im:
        m = np.array(im)
    _rewrite_mask(bad, m[:-3, :])
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, bad, tmp_path / "o", "differs from image size")


def test_rgb_mask_is_refused_naming_the_mask(synth, tmp_path, capsys):
    bad = synth / "SegmentationClass" / f"{train_ids(synth)[0]}.png"
    with Image.open(bad) as im:
        m = np.array(im)
    _rewrite_mask(bad, m, mode="RGB")
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, bad, tmp_path / "o", "mode RGB")


def test_class_value_outside_the_class_set_names_the_mask(synth, tmp_path, capsys):
    bad = synth / "SegmentationClass" / f"{train_ids(synth)[4]}.png"
    with Image.open(bad) as im:
        m = np.array(im)
    m[0, :5] = 9  # the synthetic set has classes 0..5 (and 255)
    _rewrite_mask(bad, m)
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, bad, tmp_path / "o", "mask value 9")


# -- split lists ----------------------------------------------------------------------------------


def test_empty_split_names_the_list_file(synth, tmp_path, capsys):
    lst = synth / "ImageSets/Segmentation/train.txt"
    lst.write_text("\n\n")
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, lst, tmp_path / "o", "empty")


@pytest.mark.parametrize("entry", ["../../outside", "/etc/passwd", "sub/../../x", "..\\..\\x"])
def test_split_ids_escaping_the_root_are_rejected(synth, tmp_path, capsys, entry):
    lst = synth / "ImageSets/Segmentation/train.txt"
    lst.write_text(lst.read_text() + entry + "\n")
    n = len(lst.read_text().splitlines())
    fails_cleanly(run_args(synth, tmp_path / "o"), capsys, lst, tmp_path / "o", f"line {n}")


def test_symlinked_image_folder_is_not_mistaken_for_an_escape(synth, tmp_path):
    """Ids are checked lexically; a user's own symlinked folder (common for shared datasets) works."""
    elsewhere = tmp_path / "shared-jpegs"
    shutil.move(str(synth / "JPEGImages"), elsewhere)
    (synth / "JPEGImages").symlink_to(elsewhere, target_is_directory=True)
    assert main(run_args(synth, tmp_path / "o", "--limit", "2")) == 0
    assert (tmp_path / "o" / "center-prior-native.json").is_file()


# -- methods and checkpoints ----------------------------------------------------------------------


def test_unknown_method_names_it(synth, tmp_path, capsys):
    fails_cleanly(run_args(synth, tmp_path / "o", method="cam-typo"), capsys, "'cam-typo'", tmp_path / "o",
                  "unknown method")


def test_checkpoint_of_another_size_names_the_file(synth, tmp_path, capsys):
    torch.manual_seed(0)
    a = CAMAdapter(20, backbone="resnet-tiny")  # a VOC (20-class) checkpoint on the 5-class set
    a.build()
    p = tmp_path / "cam_voc.pth"
    state = {f"resnet50.{k}": v for k, v in a.model.backbone.state_dict().items()}
    state["classifier.weight"] = a.model.classifier.weight.detach()
    torch.save(state, p)
    fails_cleanly(run_args(synth, tmp_path / "o", "--backbone", "resnet-tiny", "--checkpoint", str(p),
                           method="cam"), capsys, p, tmp_path / "o", "classifier.weight")


def test_checkpoint_of_another_method_names_the_file(synth, tmp_path, capsys):
    from wsss_bench.segmenters.deeplab import DeepLabV2Segmenter

    seg = DeepLabV2Segmenter(6, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    seg.build()
    p = tmp_path / "deeplab.pth"
    torch.save(seg.model.state_dict(), p)
    fails_cleanly(run_args(synth, tmp_path / "o", "--backbone", "resnet-tiny", "--checkpoint", str(p),
                           method="cam"), capsys, p, tmp_path / "o", "classifier.weight")


def test_corrupt_checkpoint_names_the_file(synth, cam_ckpt, tmp_path, capsys):
    p = tmp_path / "half.pth"
    p.write_bytes(cam_ckpt.read_bytes()[: cam_ckpt.stat().st_size // 2])
    fails_cleanly(run_args(synth, tmp_path / "o", "--backbone", "resnet-tiny", "--checkpoint", str(p),
                           method="cam"), capsys, p, tmp_path / "o")


class _CreatesFile:
    """Unpickling this calls open(target, 'w'): a file appears if the loader runs pickled code."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_pickle_carrying_code_is_refused_without_running_it(synth, tmp_path, capsys, fmt):
    target = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pth"
    payload = {"classifier.weight": torch.zeros(5, 8, 1, 1), "hook": _CreatesFile(target)}
    if fmt == "torch-zip":
        torch.save(payload, p)
    else:
        p.write_bytes(pickle.dumps(payload, protocol=2))
    assert not target.exists()
    fails_cleanly(run_args(synth, tmp_path / "o", "--backbone", "resnet-tiny", "--checkpoint", str(p),
                           method="cam"), capsys, p, tmp_path / "o", "refused")
    assert not target.exists(), "loading the checkpoint ran code from the pickle"
    with pytest.raises(WsssBenchError, match="refused"):
        load_state_dict(p)
    assert not target.exists()


def test_pickled_npy_carrying_code_is_refused_without_running_it(tmp_path):
    target = tmp_path / "pwned.txt"
    p = tmp_path / "x.npy"
    np.save(p, np.array({"keys": np.array([0]), "high_res": np.zeros((1, 4, 4), np.float32),
                         "evil": _CreatesFile(target)}, dtype=object), allow_pickle=True)
    assert not target.exists()
    with pytest.raises(WsssBenchError, match="unsafe or corrupt") as e:
        load_cam_file(p)
    assert str(p) in str(e.value) and not target.exists()


# -- map files (wsss-bench eval --cams) ------------------------------------------------------------


def _write_maps(root: Path, cams: Path, fmt: str) -> list[Path]:
    cams.mkdir()
    files = []
    for i in train_ids(root):
        with Image.open(root / "SegmentationClass" / f"{i}.png") as im:
            m = np.array(im)
        cls = sorted(int(c) for c in np.unique(m) if 0 < c < 255)
        scores = np.stack([(m == c).astype(np.float32) for c in cls])
        if fmt == "npz":
            p = cams / f"{i}.npz"
            np.savez_compressed(p, classes=np.asarray(cls), scores=scores.astype(np.float16))
        else:
            p = cams / f"{i}.npy"
            np.save(p, {"keys": np.asarray(cls) - 1, "high_res": scores})
        files.append(p)
    return files


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_truncated_map_file_names_the_file(synth, tmp_path, capsys, fmt):
    files = _write_maps(synth, tmp_path / "cams", fmt)
    out = tmp_path / "o"
    eval_args = ["eval", "--cams", str(tmp_path / "cams"), "--dataset", "synthetic", "--data-root", str(synth),
                 "--split", "train", "--out", str(out), "--workers", "0"]
    assert main([*eval_args, "--name", "ok"]) == 0  # the intact maps score (perfect maps: mIoU 1)
    shutil.rmtree(out)
    bad = files[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 3])
    fails_cleanly(eval_args, capsys, bad, out)


# -- suite files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "typo", "meant"), [("run", "chekpoint", "checkpoint"),
                                                      ("defaults", "data_roots", "data_root")])
def test_suite_file_with_a_typod_key_names_file_and_key(synth, tmp_path, capsys, where, typo, meant):
    suite = tmp_path / "suite.toml"
    run = f'method = "center-prior"\ndata_root = "{synth}"\n'
    if where == "run":
        suite.write_text(f'device = "cpu"\nworkers = 0\n\n[[run]]\n{run}{typo} = "x.pth"\n')
    else:
        suite.write_text(f'device = "cpu"\n{typo} = "x"\n\n[[run]]\n{run}')
    fails_cleanly(["run", str(suite), "--out", str(tmp_path / "o")], capsys, suite, tmp_path / "o",
                  f"'{typo}'", f"did you mean '{meant}'")


def test_invalid_toml_names_the_file(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text('[[run]]\nmethod = "cam\n')
    fails_cleanly(["run", str(suite), "--out", str(tmp_path / "o")], capsys, suite, tmp_path / "o", "TOML")


# -- --debug ------------------------------------------------------------------------------------------


def test_debug_flag_shows_the_traceback(synth, tmp_path):
    bad = synth / "JPEGImages" / f"{train_ids(synth)[0]}.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(WsssBenchError) as e:
        main(["--debug", *run_args(synth, tmp_path / "o")])
    assert e.value.path == str(bad) and e.value.__traceback__ is not None
    tb = "".join(__import__("traceback").format_exception(e.value))
    assert "read_rgb_image" in tb  # the traceback reaches the reader that failed


@pytest.mark.parametrize(("line", "key", "problem"), [
    ('batch_size = "four"', "batch_size", "must be an integer"),
    ("scales = 1.0", "scales", "must be a list"),
    ('scales = [1.0, "x"]', "scales", "must be a number"),
    ('flip = "yes"', "flip", "must be true or false"),
    ("hparams = 3", "hparams", "must be a table"),
    ("ignore_band = [0.2]", "ignore_band", "list of 2 values"),
    ("limit = true", "limit", "must be an integer"),
])
def test_suite_value_of_the_wrong_type_names_file_and_key(synth, tmp_path, capsys, line, key, problem):
    suite = tmp_path / "suite.toml"
    suite.write_text(f'device = "cpu"\nworkers = 0\n\n[[run]]\nmethod = "center-prior"\ndata_root = "{synth}"\n'
                     f"{line}\n")
    fails_cleanly(["run", str(suite), "--out", str(tmp_path / "o")], capsys, suite, tmp_path / "o",
                  f"'{key}'", problem)


def test_suite_values_of_the_right_type_are_accepted(synth, tmp_path):
    """Integers where floats are due (scales = [1, 0.5]) and tables of options pass the type check."""
    from wsss_bench.inference import config_from_dict

    cfg = config_from_dict({"method": "center-prior", "data_root": str(synth), "scales": [1, 0.5],
                            "ignore_band": [0, 0.5], "hparams": {"sigma": 0.3}, "flip": False, "limit": 2,
                            "dataset_options": {"labels": "mask"}}, where="t")
    assert cfg.scales == (1.0, 0.5) and all(isinstance(x, float) for x in cfg.scales)
    assert cfg.ignore_band == (0.0, 0.5) and cfg.hparams == {"sigma": 0.3} and cfg.limit == 2


@pytest.mark.parametrize(("flag", "value"), [("--workers", "-1"), ("--limit", "0")])
def test_negative_workers_or_zero_limit_are_one_line_errors(synth, tmp_path, capsys, flag, value):
    args = ["run", "--method", "center-prior", "--data-root", str(synth), "--out", str(tmp_path / "o"),
            "--device", "cpu", flag, value]
    fails_cleanly(args, capsys, flag, tmp_path / "o")


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_keys(tmp_path):
    """A diverged checkpoint used to give all-zero maps and a normal-looking record."""
    from wsss_bench.methods.cam import CAMAdapter

    p = write_tiny_cam_checkpoint(tmp_path / "cam.pth", seed=0)
    state = torch.load(p, weights_only=True)
    state["classifier.weight"][0, 0] = float("nan")
    state["newly_added.0.weight"][0, 0] = float("nan")  # IRN's layout holds the classifier twice
    torch.save(state, p)
    with pytest.raises(WsssBenchError, match=r"NaN or infinite values in classifier\.weight") as e:
        CAMAdapter(5, backbone="resnet-tiny").load_checkpoint(str(p))
    assert str(p) in str(e.value)


def test_non_finite_maps_are_an_error_not_zeros():
    """NaN maps (an overflow at reduced precision, a method bug) used to be normalised into zeros."""
    from wsss_bench.data.base import Sample
    from wsss_bench.inference import compute_maps
    from wsss_bench.methods.center_prior import CenterPriorAdapter

    class NaNPrior(CenterPriorAdapter):
        name = "nan-prior"

        def forward_maps(self, views, classes):
            out = super().forward_maps(views, classes)
            out[..., 0, 0] = float("nan")
            return out

    a = NaNPrior(5)
    a.build()
    labels = np.array([0, 1, 0, 0, 1], np.float32)
    sample = Sample("img7", np.zeros((20, 30, 3), np.uint8), labels, None)
    with pytest.raises(WsssBenchError, match="nan-prior produced NaN or infinite maps for image img7"):
        compute_maps(a, [sample], a.native, torch.device("cpu"))
