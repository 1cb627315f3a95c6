"""Options of ``leaderboard``, ``compare`` and ``export-voc-test``: unambiguous names (the old
``--samples`` / ``--ci-samples`` stay as hidden, deprecated spellings), choices as enums listed by
``--help`` and by the usage error, formats and output paths checked before any work, integer ranges,
and brackets kept in the help. Also ``datasets check --json`` / ``synth --out`` output paths."""

from __future__ import annotations

import json

import pytest
from reports_helpers import hand_record

from wsss_bench.cli import main
from wsss_bench.commands import report_cmd
from wsss_bench.commands._options import VocComp
from wsss_bench.reports.descriptors import METRICS
from wsss_bench.reports.voc_export import COMPETITIONS


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)
    return err


@pytest.fixture
def rec(tmp_path):
    return hand_record(tmp_path / "recs" / "a.json", "a", 0.5, [0.6, 0.4], method="cam")


def test_choice_lists_agree_with_the_modules_that_act_on_them():
    from wsss_bench.reports.leaderboard import FORMATS

    assert report_cmd.FORMATS == FORMATS
    assert [m.value for m in report_cmd.SortMetric] == list(METRICS)
    assert sorted(m.value for m in VocComp) == sorted(COMPETITIONS)


@pytest.mark.parametrize(("fmt", "bad"), [("md,pdf", "'pdf'"), (",", "no format given"), ("html;csv", "'html;csv'")])
def test_unknown_format_is_a_usage_error_before_any_work(rec, tmp_path, capsys, fmt, bad):
    out = tmp_path / "lb"
    assert main(["leaderboard", str(rec), "--out", str(out), "--format", fmt]) == 2
    one_line_error(capsys, "--format", bad, "md, html, csv, tex, json")
    assert not out.exists()


def test_formats_are_case_insensitive_and_deduplicated_in_the_stated_command(rec, tmp_path):
    out = tmp_path / "lb"
    assert main(["leaderboard", str(rec), "--out", str(out), "--format", "MD,json,md"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["README.md", "leaderboard.json"]
    assert "--format md,json" in (out / "README.md").read_text()


def test_sort_and_comp_are_enums_whose_errors_list_the_choices(rec, tmp_path, capsys):
    assert main(["leaderboard", str(rec), "--out", str(tmp_path / "lb"), "--sort", "accuracy"]) == 2
    one_line_error(capsys, "--sort", "'accuracy'", "'miou_best'", "'fn_ratio'", "'peak_memory_mb'")
    assert main(["export-voc-test", str(tmp_path), "--comp", "comp7"]) == 2
    one_line_error(capsys, "--comp", "'comp7'", "'comp6'", "'comp5'")


@pytest.mark.parametrize("argv", [["--grid-images", "-1"], ["--ci-resamples", "0"], ["--seed", "-2"],
                                  ["--samples", "-1"], ["--ci-samples", "0"]], ids=" ".join)
def test_leaderboard_integer_ranges(rec, tmp_path, capsys, argv):
    assert main(["leaderboard", str(rec), "--out", str(tmp_path / "lb"), *argv]) == 2
    one_line_error(capsys, argv[0])
    assert not (tmp_path / "lb").exists()


def test_old_spellings_still_work_with_a_warning_and_the_page_states_the_new_ones(rec, tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    assert main(["leaderboard", str(rec), "--out", str(new), "--format", "json", "--ci", "--ci-resamples", "50",
                 "--grid-images", "0"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["leaderboard", str(rec), "--out", str(old), "--format", "json,md", "--ci", "--ci-samples", "50",
                 "--samples", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning: --samples is deprecated; use --grid-images" in err
    assert "warning: --ci-samples is deprecated; use --ci-resamples" in err
    page = (old / "README.md").read_text()
    assert "--ci-resamples 50" in page and "--samples" not in page and "--ci-samples" not in page
    a, b = json.loads((new / "leaderboard.json").read_text()), json.loads((old / "leaderboard.json").read_text())
    a.pop("command", None), b.pop("command", None)
    assert a["groups"] == b["groups"]


def test_old_and_new_spelling_together_is_an_error(rec, tmp_path, capsys):
    assert main(["leaderboard", str(rec), "--out", str(tmp_path / "lb"), "--grid-images", "2", "--samples", "3"]) == 2
    one_line_error(capsys, "give --grid-images only")


def test_output_folder_problems_are_refused_before_any_work(rec, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["leaderboard", str(rec), "--out", str(blocker)]) == 2
    one_line_error(capsys, "--out must be a folder", str(blocker))
    assert main(["leaderboard", str(rec), "--out", str(blocker / "sub" / "lb")]) == 2
    one_line_error(capsys, f"{blocker} is a file")
    assert blocker.read_text() == "x"


def test_help_names_the_new_options_hides_the_old_and_keeps_brackets(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for cmd, shown, hidden in (("leaderboard", ["--grid-images", "--ci-resamples", "--sort", "pseudo_miou"],
                                ["--samples", "--ci-samples"]),
                               ("compare", ["--resamples", "--seed"], ["--samples"]),
                               ("export-voc-test", ["<comp6|comp5>"], [])):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        for s in shown:
            assert s in text, (cmd, s)
        for s in hidden:
            assert f"{s} " not in text, (cmd, s)
        assert "Example: wsss-bench " in text
    assert main(["export-voc-test", "--help"]) == 0
    assert "<id>.png" in capsys.readouterr().out  # angle brackets and the markup-free parts survive rich


def test_datasets_check_json_to_a_folder_or_below_a_file_is_one_line_before_checking(tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    missing_root = tmp_path / "no-dataset"  # checking would fail on it: the output path must be refused first
    assert main(["datasets", "check", "--dataset", "synthetic", "--data-root", str(missing_root),
                 "--json", str(folder)]) == 2
    one_line_error(capsys, "--json must be a file name", str(folder))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["datasets", "check", "--dataset", "synthetic", "--data-root", str(missing_root),
                 "--json", str(blocker / "report.json")]) == 2
    one_line_error(capsys, "--json", f"{blocker} is a file")


def test_datasets_synth_out_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["datasets", "synth", "--out", str(blocker), "--images", "4"]) == 2
    one_line_error(capsys, "--out must be a folder")
    assert main(["datasets", "synth", "--out", str(tmp_path / "s"), "--min-size", "8"]) == 2
    one_line_error(capsys, "--min-size")
    assert blocker.read_text() == "x" and not (tmp_path / "s").exists()


def test_no_plots_writes_the_tables_only_and_says_so_in_the_command(rec, tmp_path):
    out = tmp_path / "lb"
    assert main(["leaderboard", str(rec), "--out", str(out), "--format", "md,json", "--no-plots"]) == 0
    assert not (out / "plots").exists()
    md = (out / "README.md").read_text()
    assert "--no-plots" in md and "plots/" not in md
    assert json.loads((out / "leaderboard.json").read_text())["groups"][0]["plots"] == {}
    assert main(["leaderboard", str(rec), "--out", str(tmp_path / "tex"), "--format", "csv,tex"]) == 0
    assert not (tmp_path / "tex" / "plots").exists()  # no page links a plot: none is drawn
    assert main(["leaderboard", str(rec), "--out", str(tmp_path / "md"), "--format", "md"]) == 0
    assert any((tmp_path / "md" / "plots").glob("*.svg"))
