"""Malformed records in a leaderboard folder are skipped with a warning naming the file; text that
matplotlib would parse as math is printed as typed; a fuzz test of the record reader."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reports_helpers import hand_record, make_voc, pseudo_record

from wsss_bench.cli import main
from wsss_bench.errors import WsssBenchError
from wsss_bench.reports import build_leaderboard
from wsss_bench.reports.table import SkippedRecordWarning, collect


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """Two real records (with counts) to mutate."""
    tmp = tmp_path_factory.mktemp("valid")
    root, _ = make_voc(tmp / "voc", n=5)
    a = pseudo_record(root, tmp / "records", "cam", 0.4, 1)
    b = pseudo_record(root, tmp / "records", "edam", 0.5, 2)
    return tmp, a, b


MALFORMED = {
    "wrong type of a metric": lambda r: r["metrics"].__setitem__("miou", "high"),
    "iou list too short": lambda r: r["metrics"].__setitem__("iou", r["metrics"]["iou"][:2]),
    "precision list too short": lambda r: r["metrics"].__setitem__("precision", [0.5]),
    "missing field": lambda r: r.pop("classes"),
    "classes not strings": lambda r: r.__setitem__("classes", [1, 2, 3]),
    "metrics a list": lambda r: r.__setitem__("metrics", [0.5]),
    "num_images negative": lambda r: r.__setitem__("num_images", -4),
    "num_images a bool": lambda r: r.__setitem__("num_images", True),
    "miou above one": lambda r: r["metrics"].__setitem__("miou", 45.0),
    "sweep lists of different length": lambda r: r["sweep"].__setitem__("miou", r["sweep"]["miou"][:5]),
    "settings a number": lambda r: r.__setitem__("settings", 3),
    "timings a list": lambda r: r.__setitem__("timings", [1, 2]),
    "counts name with a path": lambda r: r.__setitem__("per_image_counts", "../../etc/passwd"),
    "unknown kind": lambda r: r.__setitem__("kind", "classification"),
    "pipeline pseudo mIoU a string": lambda r: r.__setitem__("pipeline", {"pseudo_miou": "70"}),
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_a_malformed_record_in_a_folder_is_skipped_with_a_warning_naming_it(valid, tmp_path, what):
    _, a, b = valid
    folder = tmp_path / "records"
    folder.mkdir()
    for p in (a, b):
        shutil.copy(p, folder / p.name)
        shutil.copy(p.with_name(p.stem + ".counts.npz"), folder / (p.stem + ".counts.npz"))
    rec = json.loads((folder / b.name).read_text())
    MALFORMED[what](rec)
    (folder / b.name).write_text(json.dumps(rec))
    with pytest.warns(SkippedRecordWarning) as w:
        files = build_leaderboard([folder], tmp_path / "lb", formats=("json", "md", "html"))
    msgs = [str(x.message) for x in w if issubclass(x.category, SkippedRecordWarning)]
    assert len(msgs) == 1 and msgs[0].startswith(f"{folder / b.name}: skipped: ")
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [r["record"] for g in doc["groups"] for r in g["rows"]] == [a.name]
    assert doc["skipped"][0]["file"] == str(folder / b.name)
    assert "Skipped 1 malformed record file" in (tmp_path / "lb" / "README.md").read_text()
    assert all(f.is_file() for f in files)


@pytest.mark.parametrize("what", ["invalid JSON", "not UTF-8", "NaN in JSON", "a JSON list", "counts missing",
                                  "counts corrupt", "counts of another shape"])
def test_broken_files_and_counts_are_skipped_with_a_warning(valid, tmp_path, what):
    _, a, b = valid
    folder = tmp_path / "records"
    folder.mkdir()
    for p in (a, b):
        shutil.copy(p, folder / p.name)
        shutil.copy(p.with_name(p.stem + ".counts.npz"), folder / (p.stem + ".counts.npz"))
    target = folder / b.name
    counts = folder / (b.stem + ".counts.npz")
    if what == "invalid JSON":
        target.write_text(target.read_text()[:200])
    elif what == "not UTF-8":
        target.write_bytes(b'{"kind": "\xff\xfe"}')
    elif what == "NaN in JSON":
        target.write_text(target.read_text().replace('"miou": 0.', '"miou": NaN, "x": 0.', 1))
    elif what == "a JSON list":
        target.write_text("[1, 2]")
    elif what == "counts missing":
        counts.unlink()
    elif what == "counts corrupt":
        counts.write_bytes(counts.read_bytes()[:100])
    else:
        z = np.load(counts)
        np.savez(counts, ids=z["ids"], tp=z["tp"][:, :3], fp=z["fp"][:, :3], fn=z["fn"][:, :3])
    with pytest.warns(SkippedRecordWarning, match="skipped") as w:
        build_leaderboard([folder], tmp_path / "lb", formats=("json",))
    (msg,) = [str(x.message) for x in w if issubclass(x.category, SkippedRecordWarning)]
    assert str(target) in msg or str(counts) in msg
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [r["record"] for g in doc["groups"] for r in g["rows"]] == [a.name]


def test_cli_prints_one_warning_line_per_skipped_file_and_fails_when_nothing_is_left(valid, tmp_path, capsys):
    _, a, _ = valid
    folder = tmp_path / "records"
    folder.mkdir()
    shutil.copy(a, folder / a.name)
    shutil.copy(a.with_name(a.stem + ".counts.npz"), folder / (a.stem + ".counts.npz"))
    (folder / "bad.json").write_text('{"kind": "pseudo_label", "metrics": [}')
    assert main(["leaderboard", str(folder), "--out", str(tmp_path / "lb"), "--format", "md"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {folder / 'bad.json'}: skipped: not a valid JSON record")
    (folder / a.name).unlink()
    assert main(["leaderboard", str(folder), "--out", str(tmp_path / "lb2")]) == 2
    err = capsys.readouterr().err
    assert "error: no run records found" in err and "1 malformed files skipped" in err
    # a malformed file named explicitly is an error, not a warning
    assert main(["leaderboard", str(folder / "bad.json"), "--out", str(tmp_path / "lb3")]) == 2


@pytest.mark.parametrize("name", ["$x^2$", "$\\frac{", "50% $ cost", "a_b^c {d}", "\\alpha$"])
def test_math_text_in_names_is_printed_as_typed(tmp_path, name):
    p = hand_record(tmp_path / "r" / "a.json", name, 0.5, [0.6, 0.4], method=name,
                    sweep={"thresholds": [0.0, 0.5], "miou": [0.3, 0.5]}, best_threshold=0.5)
    hand_record(tmp_path / "r" / "b.json", "other", 0.4, [0.5, 0.3], method="cam",
                sweep={"thresholds": [0.0, 0.5], "miou": [0.2, 0.4]}, best_threshold=0.5)
    files = build_leaderboard([p.parent], tmp_path / "lb", formats=("md", "html", "tex"))
    svgs = [f for f in files if f.suffix == ".svg"]
    assert {f.name.rsplit("-", 1)[-1] for f in svgs} == {"curves.svg", "errors.svg", "heatmap.svg"}
    from xml.sax.saxutils import escape

    for f in svgs:  # text stays text in the SVG (svg.fonttype none): the name appears literally
        assert escape(name) in f.read_text(), f.name


# -- fuzz ---------------------------------------------------------------------------------------

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                  st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=4),
                  st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(obj, prefix=()):
    """Every (path, value) in a nested dict/list."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:6]):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _delete(obj, path):
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_every_mutated_record_loads_or_is_skipped_with_a_warning(valid, data):
    _, a, b = valid
    base = json.loads(b.read_text())
    rec = copy.deepcopy(base)
    spots = [p for p, _ in _paths(rec) if p]
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["set", "delete", "truncate"]),
                                       st.integers(0, len(spots) - 1), _JUNK), min_size=1, max_size=3))
    for op, i, junk in ops:
        spots = [p for p, _ in _paths(rec) if p]
        path = spots[i % len(spots)]
        try:
            if op == "set":
                _set(rec, path, junk)
            elif op == "delete":
                _delete(rec, path)
            else:
                parent = rec
                for k in path[:-1]:
                    parent = parent[k]
                if isinstance(parent[path[-1]], list):
                    parent[path[-1]] = parent[path[-1]][: max(0, len(parent[path[-1]]) - 1)]
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(rec)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] if data.draw(st.booleans()) else text
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "records"
        folder.mkdir()
        for p in (a, b):
            shutil.copy(p.with_name(p.stem + ".counts.npz"), folder / (p.stem + ".counts.npz"))
        shutil.copy(a, folder / a.name)
        (folder / b.name).write_text(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                build_leaderboard([folder], Path(d) / "lb", formats=("json", "md", "csv", "tex", "html"),
                                  plots=False)
            except WsssBenchError as e:  # only a one-line user error may escape (e.g. class lists differ)
                assert "\n" not in str(e)
                event("refused with a one-line error")
                return
        skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedRecordWarning)]
        doc = json.loads((Path(d) / "lb" / "leaderboard.json").read_text())
        shown = [r["record"] for g in doc["groups"] for r in g["rows"]]
        event("skipped with a warning" if skipped else "loaded")
        if skipped:
            assert len(skipped) == 1 and skipped[0].startswith(str(folder / b.name)) and shown == [a.name]
        else:
            assert sorted(shown) == sorted([a.name, b.name]) or not _looks_like_record(text)


def _looks_like_record(text: str) -> bool:
    try:
        obj = json.loads(text)
    except ValueError:
        return True
    return not isinstance(obj, dict) or any(k in obj for k in ("protocol_version", "kind", "metrics"))


def test_collect_reports_skipped_files(valid, tmp_path):
    _, a, _ = valid
    folder = tmp_path / "r"
    folder.mkdir()
    shutil.copy(a, folder / a.name)
    shutil.copy(a.with_name(a.stem + ".counts.npz"), folder)
    (folder / "x.json").write_text('{"kind": 3}')
    with pytest.warns(SkippedRecordWarning):
        got = collect([folder])
    assert [Path(r["_path"]).name for r in got.records] == [a.name]
    assert got.skipped == [(str(folder / "x.json"), "not a run record (missing protocol_version, dataset, split, "
                                                    "num_images, fingerprint, classes, metrics)")]
