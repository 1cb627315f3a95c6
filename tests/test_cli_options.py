"""``wsss-bench run`` checks every option before any work: a bad value is one line, exit code 2, and
nothing is written (no folder created). Choices are enums that agree with the code acting on them;
``run`` without a method never runs the demo in its place; ``--help`` keeps its brackets and has an
example in every command. All through the real entry point ``wsss_bench.cli.main``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wsss_bench.cli import COMMANDS, load_command, main, reflow
from wsss_bench.commands import _options as O
from wsss_bench.data.synthetic import generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("opts") / "shapes", num_images=8, seed=5, size=(40, 56))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def fails_before_work(argv: list[str], capsys, where: Path, *fragments: str) -> str:
    """Exit 2, one ``error:`` line holding ``fragments``, and ``where`` unchanged (nothing written)."""
    before = tree(where)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert out == ""
    assert tree(where) == before, "something was written"
    return lines[0]


# ----------------------------------------------------------------------------------------------
# the enums agree with the code that acts on the values
# ----------------------------------------------------------------------------------------------


def values(enum) -> tuple[str, ...]:
    return tuple(m.value for m in enum)


def test_choice_enums_match_the_values_the_code_accepts():
    from wsss_bench.data import DATASET_OPTIONS, DATASETS
    from wsss_bench.inference import config as C
    from wsss_bench.inference.device import PRECISIONS

    assert values(O.Dataset) == tuple(DATASETS)
    assert values(O.Precision) == tuple(PRECISIONS)
    assert values(O.Stage) == tuple(C.STAGES)
    assert values(O.Refine) == tuple(C.REFINEMENTS)
    assert set(values(O.Settings)) == set(C.SETTINGS_NAMES) | {"native+crf", "standard+crf"}
    assert values(O.VocLabels) == DATASET_OPTIONS["voc"]["labels"]
    assert values(O.Crowd) == DATASET_OPTIONS["coco"]["crowd"]
    assert values(O.MaskIds) == DATASET_OPTIONS["coco"]["mask_ids"]
    assert O.MAX_THRESHOLDS == C.MAX_THRESHOLDS
    from wsss_bench.demo.train import DEMO_MODELS

    assert values(O.DemoModel) == tuple(DEMO_MODELS)


def test_choice_members_read_as_their_plain_values():
    assert str(O.Settings("native+crf")) == "native+crf" and O.Settings("native") == "native"
    assert O.value_of(O.Precision("bf16")) == "bf16" and O.value_of(None) is None and O.value_of(3) == 3


def test_parsers():
    assert O.parse_floats("1.0, 0.5,2", "--scales") == (1.0, 0.5, 2.0)
    assert O.parse_floats(None, "--scales") is None
    for bad in ("a,b", ",", ""):
        with pytest.raises(O.WsssBenchError, match="--scales"):
            O.parse_floats(bad, "--scales")
    with pytest.raises(O.WsssBenchError, match="needs 2"):
        O.parse_floats("0.1", "--ignore-band", 2)
    assert O.parse_hparams(["a=1", "b=x,2", "c=true", "d=0.5"]) == {"a": 1, "b": ["x", 2], "c": True, "d": 0.5}
    for bad in ("a", "=1"):
        with pytest.raises(O.WsssBenchError, match="KEY=VALUE"):
            O.parse_hparams([bad])


# ----------------------------------------------------------------------------------------------
# options are validated before any work
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    return tmp_path


def base(synth: Path) -> list[str]:
    return ["run", "--method", "center-prior", "--data-root", str(synth), "--workers", "0"]


@pytest.mark.parametrize("extra,fragments", [
    (["--save-pseudo", "p", "--threshold", "1.5"], ["--threshold", "1.5"]),
    (["--save-pseudo", "p", "--threshold", "nan"], ["--threshold"]),
    (["--save-pseudo", "p", "--threshold", "bestest"], ["--threshold", "best, native, calibrated"]),
    (["--save-pseudo", "p", "--ignore-band", "0.6,0.2"], ["--ignore-band", "0.6,0.2"]),
    (["--save-pseudo", "p", "--ignore-band", "0.2"], ["--ignore-band", "2"]),
    (["--ignore-band", "0.2,0.6"], ["--ignore-band", "--save-pseudo"]),
    (["--scales", "nan"], ["--scales", "nan"]),
    (["--scales", "inf"], ["--scales", "inf"]),
    (["--scales", "1.0,-1"], ["--scales"]),
    (["--scales", "x"], ["--scales"]),
    (["--num-thresholds", "1000000000"], ["--num-thresholds", "10000"]),
    (["--thresholds", "1000000000"], ["--num-thresholds", "10000"]),
    (["--out", "a-file"], ["--out", "a-file", "file"]),
    (["--save-cams", "a-file"], ["--save-cams", "a-file"]),
    (["--save-cams", "a-file/maps"], ["--save-cams", "a-file"]),
    (["--save-pseudo", "a-file"], ["--save-pseudo", "a-file"]),
    (["--save-pseudo", "a-file/labels"], ["--save-pseudo", "a-file"]),
    (["--hparam", "nosuch=1"], ["hyper-parameter", "nosuch"]),
    (["--hparam", "sigma=abc"], ["sigma"]),
    (["--backbone", "resnet-huge"], ["backbone", "resnet-huge"]),
    (["--data-opt", "labels=xml"], ["labels", "xml"]),
    (["--refine", "saliency"], ["--saliency"]),
    (["--device", "tpu"], ["tpu"]),
    (["--save-pred", "preds"], ["--save-pred", "--stage segmentation"]),
    (["--segmenter", "deeplabv2"], ["--segmenter", "--stage segmentation"]),
    (["--demo-images", "8"], ["--demo-images", "demo only"]),
    (["--jobs", "2"], ["--jobs", "demo only"]),
])
def test_bad_run_option_fails_before_any_work(extra, fragments, synth, in_tmp, capsys):
    fails_before_work([*base(synth), *extra], capsys, in_tmp, *fragments)
    assert not (in_tmp / "wsss-bench-runs").exists()


def test_unknown_method_and_missing_checkpoint_fail_before_any_work(synth, in_tmp, capsys):
    fails_before_work(["run", "--method", "cma", "--data-root", str(synth)], capsys, in_tmp, "cma", "cam")
    fails_before_work(["run", "--method", "cam", "--data-root", str(synth)], capsys, in_tmp, "--checkpoint")
    fails_before_work(["run", "--stage", "segmentation", "--segmenter", "deeplabv2", "--data-root", str(synth)],
                      capsys, in_tmp, "deeplabv2", "--checkpoint")
    fails_before_work(["run", "--stage", "segmentation", "--data-root", str(synth)], capsys, in_tmp, "--segmenter")
    fails_before_work(["run", "--stage", "segmentation", "--segmenter", "deeplabv2", "--method", "cam",
                       "--data-root", str(synth)], capsys, in_tmp, "--method", "--segmenter")


def test_output_in_a_read_only_folder_fails_before_any_work(synth, in_tmp, capsys, monkeypatch):
    ro = in_tmp / "ro"
    ro.mkdir()
    real_access = os.access
    # the process may run as root, for which a chmod-ed folder stays writable: refuse it through os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    for opt in ("--out", "--save-cams", "--save-pseudo"):
        fails_before_work([*base(synth), opt, str(ro / "x")], capsys, in_tmp, opt, "not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_in_a_chmod_read_only_folder_fails_before_any_work(synth, in_tmp, capsys):
    ro = in_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        fails_before_work([*base(synth), "--out", str(ro / "x")], capsys, in_tmp, "--out", "not writable")
    finally:
        ro.chmod(0o755)


def test_every_run_of_a_suite_is_checked_before_the_first_starts(synth, in_tmp, capsys):
    (in_tmp / "suite.toml").write_text(
        f'data_root = "{synth}"\nworkers = 0\n\n[[run]]\nmethod = "center-prior"\nname = "ok"\n\n'
        '[[run]]\nmethod = "center-prior"\nname = "bad"\nsave_pseudo = "labels"\nthreshold = "1.5"\n')
    fails_before_work(["run", "suite.toml"], capsys, in_tmp, "--threshold", "1.5")
    assert not (in_tmp / "wsss-bench-runs").exists()


def test_a_suite_refuses_run_options_it_would_ignore(synth, in_tmp, capsys):
    (in_tmp / "suite.toml").write_text(f'data_root = "{synth}"\n[[run]]\nmethod = "center-prior"\n')
    fails_before_work(["run", "suite.toml", "--method", "cam", "--limit", "2"], capsys, in_tmp,
                      "--method and --limit", "suite")
    (in_tmp / "bad.toml").write_text("run = [1, 2]\n")
    fails_before_work(["run", "bad.toml"], capsys, in_tmp, "bad.toml", "[[run]] #1")


def test_suite_values_are_overridden_by_out_device_workers_given_on_the_command_line(synth, in_tmp, capsys):
    (in_tmp / "suite.toml").write_text(
        f'data_root = "{synth}"\nout = "from-suite"\nworkers = 0\n[[run]]\nmethod = "center-prior"\nlimit = 2\n')
    assert main(["run", "suite.toml", "--out", "from-cli"]) == 0
    assert (in_tmp / "from-cli" / "center-prior-native.json").is_file()
    assert not (in_tmp / "from-suite").exists()
    assert main(["run", "suite.toml"]) == 0
    assert (in_tmp / "from-suite" / "center-prior-native.json").is_file()


def test_deprecated_thresholds_spelling_still_sets_the_sweep_size(synth, in_tmp, capsys):
    assert main([*base(synth), "--limit", "2", "--thresholds", "20"]) == 0
    err = capsys.readouterr().err
    assert "--thresholds is deprecated; use --num-thresholds" in err
    rec = json.loads((in_tmp / "wsss-bench-runs" / "center-prior-native.json").read_text())
    assert rec["num_thresholds"] == 20 and len(rec["sweep"]["miou"]) == 20


# ----------------------------------------------------------------------------------------------
# run without a method never runs the demo in its place
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,named", [
    (["--data-root", "DATA", "--checkpoint", "ckpt.pth"], "--checkpoint and --data-root"),
    (["--data-root", "DATA"], "--data-root"),
    (["--settings", "standard"], "--settings"),
    (["--dataset", "voc", "--split", "val", "--limit", "5"], "--dataset, --split and --limit"),
    (["--save-pseudo", "labels"], "--save-pseudo"),
    (["--num-thresholds", "50"], "--num-thresholds"),
])
def test_run_options_without_a_method_are_an_error_not_the_demo(extra, named, in_tmp, capsys):
    (in_tmp / "DATA").mkdir()
    (in_tmp / "ckpt.pth").write_bytes(b"x")
    line = fails_before_work(["run", *extra], capsys, in_tmp, named, "--method NAME", "demo")
    assert ("need --method" if " and " in named else "needs --method") in line
    assert not (in_tmp / "wsss-bench-demo").exists()


def test_demo_output_folder_is_checked_before_the_demo_starts(in_tmp, capsys):
    fails_before_work(["run", "--out", "a-file"], capsys, in_tmp, "--out", "a-file")
    fails_before_work(["run", "--demo-images", "2"], capsys, in_tmp, "--demo-images")
    fails_before_work(["run", "--jobs", "0"], capsys, in_tmp, "--jobs")


# ----------------------------------------------------------------------------------------------
# --help
# ----------------------------------------------------------------------------------------------


def help_of(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_root_help_lists_every_command_without_importing_it(capsys):
    text = help_of([], capsys)
    for name in COMMANDS:
        assert f" {name} " in text


def test_root_help_line_of_each_command_is_its_own_first_paragraph():
    for name, (_module, line) in COMMANDS.items():
        cmd = load_command(name)
        assert reflow(cmd.help).split("\n\n")[0] == line, name


def test_help_keeps_brackets_and_lists_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = help_of(["run"], capsys)
    assert "[[run]] tables" in text and "[crf] extra" in text
    assert "<voc|coco|synthetic>" in text and "<fp32|bf16|fp16>" in text and "<pseudo|segmentation>" in text
    assert "--num-thresholds" in text and "--thresholds " not in text  # the old spelling is hidden
    assert "native+crf" in text and "crf+saliency" in text


def test_every_command_help_has_an_example(capsys):
    for name in COMMANDS:
        cmd = load_command(name)
        for sub in (getattr(cmd, "commands", None) or {name: cmd}):
            argv = [name, sub] if sub != name else [name]
            text = help_of(argv, capsys)
            assert "Example" in text and "wsss-bench " in text.split("Example", 1)[1], argv


def test_help_paragraphs_are_not_broken_mid_sentence():
    assert reflow("First line\n    continues.\n\n    Second\n    paragraph.") == \
        "First line continues.\n\nSecond paragraph."
    assert reflow("A\n\n\b\nkeep\nlines") == "A\n\n\b\nkeep\nlines"


def test_cache_dtype_option_sets_the_cached_maps_and_the_record(synth, tmp_path, capsys):
    """--cache-dtype float16 halves the cache and the record names it; float32 is the default; a
    value outside the enum is one line listing the valid ones."""
    import numpy as np

    base = ["run", "--method", "center-prior", "--dataset", "synthetic", "--data-root", str(synth),
            "--split", "train", "--limit", "3"]
    for dtype in ("float16", None):
        out, cams = tmp_path / f"o-{dtype}", tmp_path / f"c-{dtype}"
        extra = [] if dtype is None else ["--cache-dtype", dtype]
        assert main([*base, "--save-cams", str(cams), "--out", str(out), *extra]) == 0
        rec = json.loads((out / "center-prior-native.json").read_text())
        assert rec["map_dtype"] == (dtype or "float32")
        (entry, *_) = sorted(cams.glob("*.npz"))
        with np.load(entry) as z:
            assert z["scores"].dtype == np.dtype(dtype or "float32")
    msg = fails_before_work([*base, "--cache-dtype", "float8", "--out", str(tmp_path / "bad")], capsys, tmp_path,
                            "--cache-dtype")
    assert "float32" in msg and "float16" in msg
