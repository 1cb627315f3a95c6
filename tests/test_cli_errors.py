"""Every usage error of the command line is one line on stderr with exit code 2 and a hint.

Runs the real entry point ``wsss_bench.cli.main`` over bad command lines of every command that
``wsss-bench --help`` lists: unknown options and commands, values of the wrong type, bad choices,
missing arguments and options, values out of range. typer >= 0.29 raises the exceptions of its own
bundled click, which the CLI used to let through as a traceback.
"""

from __future__ import annotations

import pytest

from wsss_bench.cli import COMMANDS, PROG, load_command, main


def all_command_paths() -> list[list[str]]:
    """Every runnable command, as the words after ``wsss-bench`` (groups expanded)."""
    paths = []
    for name in COMMANDS:
        cmd = load_command(name)
        subs = getattr(cmd, "commands", None)
        if subs:
            paths += [[name, sub] for sub in subs]
        else:
            paths.append([name])
    return paths


def one_error_line(argv: list[str], capsys) -> str:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (argv, rc, err)
    assert len(lines) == 1, (argv, err)
    assert out == "", (argv, out)
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line, line
    return line


def test_every_command_is_listed_and_every_group_has_commands():
    paths = all_command_paths()
    assert ["run"] in paths and ["datasets", "check"] in paths and ["demo", "train"] in paths
    assert len(paths) >= 10


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p))
def test_unknown_option_of_every_command_is_one_line_naming_the_command(path, capsys):
    line = one_error_line([*path, "--no-such-option-zz"], capsys)
    where = " ".join([PROG, *path])
    assert f"{where}: No such option: --no-such-option-zz" in line
    assert f"(see '{where} --help')" in line


# (argv, fragments the one line must contain: the problem and the hint)
CASES = [
    (["train-seg", "--pseudo"], ["--pseudo", "requires an argument", "wsss-bench train-seg --help"]),
    (["train-seg", "--dataset", "pascal", "--pseudo", "p", "--data-root", "d", "--out", "o"],
     ["'--dataset'", "'voc'", "'coco'", "'synthetic'"]),
    (["run", "--metod", "cam"], ["No such option: --metod", "--method", "wsss-bench run --help"]),
    (["run", "--batch-size", "abc"], ["'--batch-size'", "'abc'", "integer"]),
    (["run", "--batch-size", "0"], ["'--batch-size'", "greater than or equal to 1"]),
    (["run", "--settings", "nativ"], ["'--settings'", "'nativ' is not one of", "'native'", "'standard'"]),
    (["run", "--precision", "fp8"], ["'--precision'", "'fp32'", "'bf16'", "'fp16'"]),
    (["run", "--dataset", "pascal"], ["'--dataset'", "'voc'", "'coco'", "'synthetic'"]),
    (["run", "--stage", "final"], ["'--stage'", "'pseudo'", "'segmentation'"]),
    (["run", "--refine", "dcrf"], ["'--refine'", "'crf'", "'crf+saliency'"]),
    (["run", "--num-thresholds", "0"], ["'--num-thresholds'"]),
    (["run", "--num-thresholds", "1000000000"], ["'--num-thresholds'", "less than or equal to 10000"]),
    (["run", "--flip=yes"], ["--flip", "does not take a value"]),
    (["run", "--method"], ["--method", "requires an argument", "wsss-bench run --help"]),
    (["methods", "extra"], ["unexpected extra argument", "wsss-bench methods --help"]),
    (["run", "no-such-suite.toml"], ["'no-such-suite.toml' does not exist"]),
    (["run", "--checkpoint", "no-such.pth", "--method", "cam"], ["'--checkpoint'", "no-such.pth", "does not exist"]),
    (["run", "--data-root", "no-such-dir", "--method", "cam"], ["'--data-root'", "does not exist"]),
    (["rn"], ["No such command 'rn'", "Did you mean 'run'?"]),
    (["frobnicate"], ["No such command 'frobnicate'", "wsss-bench --help"]),
    (["--no-such-root-option"], ["No such option: --no-such-root-option"]),
    (["eval", "--workers", "many"], ["'--workers'", "'many'"]),
    (["eval", "--pred"], ["--pred", "requires an argument", "wsss-bench eval --help"]),
    (["datasets", "check", "--dataset", "voc"], ["Missing option '--data-root'", "wsss-bench datasets check"]),
    (["datasets", "check", "--dataset", "kitti", "--data-root", "."], ["'--dataset'", "'voc'", "'coco'"]),
    (["datasets", "check", "--dataset", "voc", "--data-root", ".", "--labels", "json"], ["'mask'", "'xml'"]),
    (["datasets", "prepare", "coco", "--data-root", ".", "--crowd", "drop"], ["'ignore'", "'background'"]),
    (["datasets", "synth", "--out", "x", "--images", "2"], ["'--images'", "greater than or equal to 4"]),
    (["datasets", "frob"], ["No such command 'frob'", "wsss-bench datasets --help"]),
    (["datasets", "prepare", "--data-root", "."], ["Missing argument"]),
    (["leaderboard", "r.json", "--ci-samples", "1.5"], ["'--ci-samples'", "'1.5'"]),
    (["compare", "a.json"], ["Missing argument", "wsss-bench compare --help"]),
    (["compare", "a.json", "b.json", "--samples", "lots"], ["'--samples'", "'lots'"]),
    (["export-voc-test", "preds", "--comp"], ["--comp", "requires an argument"]),
    (["demo", "train", "--seed", "x", "--out", "o"], ["'--seed'", "'x'"]),
    (["demo", "train", "--out", "o", "--method", "foo"], ["'--method'", "'foo'", "'cam'", "'more'"]),
    (["demo", "trian"], ["No such command 'trian'", "Did you mean 'train'?"]),
]


@pytest.mark.parametrize("argv,fragments", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_error_is_one_line_with_exit_2_and_a_hint(argv, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written, and relative paths name nothing that exists
    line = one_error_line(argv, capsys)
    for f in fragments:
        assert f in line, (f, line)
    assert sorted(tmp_path.iterdir()) == []


def test_usage_errors_cover_every_command():
    covered = {tuple(argv[:2]) if argv[0] in ("datasets", "demo") else (argv[0],) for argv, _ in CASES}
    for path in all_command_paths():
        assert tuple(path) in covered, path


def test_a_group_called_alone_shows_its_help_with_exit_0(capsys):
    for argv in ([], ["datasets"], ["demo"]):
        capsys.readouterr()
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert "Usage: wsss-bench" in out and err == "", argv


def test_a_command_called_without_its_required_options_shows_help_with_exit_2(capsys):
    assert main(["eval"]) == 2
    assert "Usage: wsss-bench eval" in capsys.readouterr().out


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "Usage: wsss-bench" in capsys.readouterr().out
    assert main(["-h"]) == 0
    capsys.readouterr()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("wsss-bench ")


def test_user_error_is_one_line_and_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    from wsss_bench.errors import WsssBenchError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[[run]]\nmethod = 'cam'\nthreshold = 2\n")
    line = one_error_line(["run", "bad.toml"], capsys)
    assert "bad.toml" in line and "threshold" in line
    with pytest.raises(WsssBenchError):
        main(["--debug", "run", "bad.toml"])
