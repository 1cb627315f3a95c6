"""Leaderboards: grouping, sort direction per metric, escaping, per-class values, plots, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from reports_helpers import hand_record, make_voc, pseudo_record, segmentation_record

from wsss_bench import PROTOCOL_VERSION
from wsss_bench.cli import main
from wsss_bench.errors import WsssBenchError
from wsss_bench.reports import METRICS, build_leaderboard
from wsss_bench.reports.grid import choose_ids, pseudo_label
from wsss_bench.reports.table import collect_records, group_records, ranked_frame

EVIL = "<script>alert(1)</script>"


def plot_stem(lb: Path, what: str, name: str) -> str:
    """The stem of a group's plot: ``v<protocol>-voc-<split>-<kind>-<fingerprint[:8]>-<name>``."""
    (p,) = (lb / "plots").glob(f"v{PROTOCOL_VERSION}-voc-{what}-*-{name}.png")
    return p.stem


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Four real pseudo-label records (one with a hostile name) and one segmentation record."""
    tmp = tmp_path_factory.mktemp("real")
    root, _ = make_voc(tmp / "voc", n=8)
    out = tmp / "records"
    paths = [pseudo_record(root, out, m, q, s, **extra) for m, q, s, extra in (
        ("cam", 0.35, 1, {}), ("edam", 0.5, 2, {}), (EVIL, 0.45, 3, {}),
        ("ad-cam", 0.3, 4, {"interpretation": "abstract-only"}))]
    seg = segmentation_record(root, out, "deeplabv2", 5)
    return tmp, root, out, paths, seg


@pytest.fixture(scope="module")
def board(real):
    tmp, _, out, _, _ = real
    lb = tmp / "lb"
    files = build_leaderboard([out], lb, ci=True, ci_samples=200, samples=2, title="T")
    return lb, files


def test_groups_never_mix_dataset_split_kind_protocol_or_image_set(tmp_path):
    iou = [0.9, 0.5, None]
    f = "f" * 64
    a = hand_record(tmp_path / "a.json", "a", 0.7, iou, protocol_version=1)
    b = hand_record(tmp_path / "b.json", "b", 0.6, iou, split="val", protocol_version=1)
    c = hand_record(tmp_path / "c.json", "c", 0.5, iou, kind="segmentation", protocol_version=1)
    d = hand_record(tmp_path / "d.json", "d", 0.4, iou, protocol_version=2)
    e = hand_record(tmp_path / "e.json", "e", 0.8, iou, protocol_version=1)
    g3 = hand_record(tmp_path / "g.json", "g", 0.9, iou, protocol_version=1, fingerprint="3" * 64, limit=3,
                      num_images=3)
    groups = group_records(collect_records([a, b, c, d, e, g3]))
    keys = [(g.key, sorted(r["name"] for r in g.records)) for g in groups]
    assert keys == [(("1", "synthetic", "train", "pseudo_label", f), ["a", "e"]),
                    (("1", "synthetic", "train", "pseudo_label", "3" * 64), ["g"]),
                    (("1", "synthetic", "train", "segmentation", f), ["c"]),
                    (("1", "synthetic", "val", "pseudo_label", f), ["b"]),
                    (("2", "synthetic", "train", "pseudo_label", f), ["d"])]
    files = build_leaderboard([tmp_path], tmp_path / "lb", formats=("json", "md"))
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [[r["rank"] for r in g["rows"]] for g in doc["groups"]] == [[1, 2], [1], [1], [1], [1]]
    md = (tmp_path / "lb" / "README.md").read_text()
    assert "ranked only against records of the same protocol version, dataset, split, kind and image set" in md
    assert all(f.is_file() for f in files)


@pytest.mark.parametrize("key", sorted(METRICS))
def test_sort_direction_follows_each_metric(tmp_path, key):
    rng = np.random.default_rng(len(key))
    paths = []
    for i in range(5):
        v = float(rng.random())
        extra = {"best_threshold": v, "timings": {"images_per_second": v, "seconds": v, "peak_memory_mb": v},
                 "calibrated": {"miou": v}, "native": {"miou": v}, "pipeline": {"pseudo_miou": v},
                 "official": {"script": "irn", "miou": v}}
        p = hand_record(tmp_path / f"r{i}.json", f"r{i}", v, [v, v, None], **extra)
        rec = json.loads(p.read_text())
        for k in ("precision", "recall", "fp_ratio", "fn_ratio"):
            rec["metrics"][k] = [v, v, None]
        rec["metrics"]["pixel_accuracy"] = rec["metrics"]["fw_iou"] = v
        p.write_text(json.dumps(rec))
        paths.append(p)
    missing = hand_record(tmp_path / "none.json", "none", None, [None, None, None])
    rec = json.loads(missing.read_text())
    for k in ("precision", "recall", "fp_ratio", "fn_ratio"):
        rec["metrics"][k] = [None, None, None]
    rec["metrics"]["pixel_accuracy"] = rec["metrics"]["fw_iou"] = None
    missing.write_text(json.dumps(rec))
    (group,) = group_records(collect_records([*paths, missing]))
    spec = METRICS[key]
    df = ranked_frame(group, spec)
    values = [v for v in df[key].tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    # reference: plain sorted() in the metric's direction
    expected = sorted(values, reverse=bool(spec.higher_is_better))
    assert values == expected
    assert df["label"].iloc[-1] == "none"  # missing values rank last
    assert list(df["rank"]) == list(range(1, 7))


def test_lower_is_better_metrics_are_declared():
    assert METRICS["fp_ratio"].higher_is_better is False and METRICS["fn_ratio"].higher_is_better is False
    assert METRICS["miou_best"].higher_is_better is True and METRICS["seconds"].higher_is_better is False
    assert METRICS["miou_best"].format(0.12345) == "12.3" and METRICS["images_per_second"].format(3.14159) == "3.14"


def test_unknown_sort_or_format_is_an_error(tmp_path):
    p = hand_record(tmp_path / "a.json", "a", 0.5, [0.5, 0.5])
    with pytest.raises(WsssBenchError, match="unknown metric"):
        build_leaderboard([p], tmp_path / "o", sort="accuracy")
    with pytest.raises(WsssBenchError, match="unknown leaderboard format"):
        build_leaderboard([p], tmp_path / "o", formats=("pdf",))
    assert main(["leaderboard", str(p), "--out", str(tmp_path / "o"), "--sort", "nope"]) == 2


def test_html_escapes_every_record_string(board):
    lb, _ = board
    page = (lb / "index.html").read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only our own sorting script
    md = (lb / "README.md").read_text()
    assert EVIL not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_hostile_strings_in_attributes_and_latex(tmp_path):
    name = 'x" onmouseover="alert(1)'
    p = hand_record(tmp_path / "a.json", name, 0.5, [0.5, 0.5], backbone="50%_{a}&b")
    build_leaderboard([p], tmp_path / "lb", formats=("html", "tex"), title='"><img src=x onerror=alert(1)>')
    page = (tmp_path / "lb" / "index.html").read_text()
    assert 'onmouseover="alert(1)' not in page and "<img src=x" not in page
    assert "x&#34; onmouseover=&#34;alert(1)" in page or "x&quot; onmouseover=&quot;alert(1)" in page
    tex = (tmp_path / "lb" / "leaderboard.tex").read_text()
    assert r"50\%\_\allowbreak{}\{a\}\&b" in tex
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_per_class_table_equals_the_records(board, real):
    lb, _ = board
    _, _, _, paths, seg = real
    recs = {Path(p).name: json.loads(Path(p).read_text()) for p in [*paths, seg]}
    doc = json.loads((lb / "leaderboard.json").read_text())
    pc_csv = pd.read_csv(lb / "per_class.csv")
    checked = 0
    for g in doc["groups"]:
        for row in g["rows"]:
            rec = recs[row["record"]]
            ref = rec["metrics"]["iou"]
            got = g["per_class_iou_pct"][row["label"]]
            assert got == [None if v is None else pytest.approx(100 * v, abs=1e-9) for v in ref]
            csv_row = pc_csv[(pc_csv["run"] == row["label"]) & (pc_csv["split"] == g["split"])].iloc[0]
            for c, v in zip(g["classes"], ref, strict=True):
                got_csv = csv_row[f"iou_pct_{c}"]
                assert (math.isnan(got_csv) if v is None else got_csv == pytest.approx(100 * v, abs=1e-9))
            assert row["miou_best_pct"] == pytest.approx(100 * rec["metrics"]["miou"])
            checked += 1
        # best per class: a naive column scan
        for j in range(len(g["classes"])):
            col = [g["per_class_iou_pct"][r["label"]][j] for r in g["rows"]]
            vals = [v for v in col if v is not None]
            flags = [g["best_per_class"][r["label"]][j] for r in g["rows"]]
            assert flags == [v is not None and vals and v == max(vals) for v in col]
    assert checked == 5


def test_published_numbers_are_shown_but_not_ranked(board, real):
    lb, _ = board
    doc = json.loads((lb / "leaderboard.json").read_text())
    (pseudo,) = [g for g in doc["groups"] if g["kind"] == "pseudo_label"]
    assert len(pseudo["rows"]) == 4  # measured rows only
    cam = next(r for r in pseudo["rows"] if r["method_id"] == "cam")
    assert cam["method"] == "CAM"
    assert cam["published_miou_pct"] == "48.3; 66.5 (irn)"
    assert any(p["method"] == "toco" for p in doc["published"])
    md = (lb / "README.md").read_text()
    assert "## Published numbers (not measured here; not ranked)" in md
    assert "interpretation: abstract-only" in md


def test_plots_written_and_non_empty(board):
    lb, files = board
    plots = sorted(p.name for p in (lb / "plots").iterdir())
    for stem in (plot_stem(lb, "train-pseudo_label", "curves"), plot_stem(lb, "train-pseudo_label", "errors"),
                 plot_stem(lb, "train-pseudo_label", "heatmap"), plot_stem(lb, "val-segmentation", "heatmap")):
        assert f"{stem}.png" in plots and f"{stem}.svg" in plots
        with Image.open(lb / "plots" / f"{stem}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 100
        assert (lb / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert f"{plot_stem(lb, 'train-pseudo_label', 'samples')}.png" in plots
    assert all(f.stat().st_size > 0 for f in files)


def test_ci_column_against_top_row(board):
    lb, _ = board
    doc = json.loads((lb / "leaderboard.json").read_text())
    (pseudo,) = [g for g in doc["groups"] if g["kind"] == "pseudo_label"]
    assert pseudo["rows"][0]["vs_top"] == "top"
    for r in pseudo["rows"][1:]:
        c = r["vs_top"]
        assert c["difference_pct"] == pytest.approx(r["miou_best_pct"] - pseudo["rows"][0]["miou_best_pct"], abs=1e-9)
        assert c["ci_low_pct"] <= c["ci_high_pct"] and c["samples"] == 200


def test_regeneration_is_deterministic_and_skips_its_own_output(real, tmp_path):
    _, _, out, paths, seg = real
    cmd = "wsss-bench leaderboard records --out lb --grid-images 1"
    build_leaderboard([out], out, samples=1, command=cmd)  # pages next to the records, as leaderboards/demo
    assert (out / "leaderboard.json").is_file()
    # the generated leaderboard.json in the records folder is not taken for a record
    assert sorted(r["_path"] for r in collect_records([out])) == sorted(str(p) for p in [*paths, seg])
    build_leaderboard([out], tmp_path / "b", samples=1, command=cmd)
    curves, samples = plot_stem(out, "train-pseudo_label", "curves"), plot_stem(out, "train-pseudo_label", "samples")
    for name in ("README.md", "index.html", "leaderboard.json", "leaderboard.csv", "leaderboard.tex",
                 f"plots/{curves}.svg", f"plots/{curves}.png", f"plots/{samples}.png"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_grid_pseudo_label_matches_a_naive_rebuild():
    rng = np.random.default_rng(0)
    classes = np.array([3, 7], dtype=np.int64)
    scores = rng.random((2, 5, 6)).astype(np.float32)
    scores[:, 0, 0] = 0.5  # tie: lowest class wins
    label, m = pseudo_label(classes, scores, [7, 3, 9], threshold_index=40, num_thresholds=100, shape=(5, 6))
    for y in range(5):
        for x in range(6):
            vals = {3: scores[0, y, x], 7: scores[1, y, x], 9: 0.0}
            best = max(vals.values())
            k = min(c for c, v in vals.items() if v == best)
            q = math.floor(float(np.float32(best) * np.float32(100)))
            assert label[y, x] == (k if q >= 40 else 0)
            assert m[y, x] == pytest.approx(best)


def test_grid_samples_are_reproducible_and_order_independent():
    ids = [f"img{i}" for i in range(50)]
    a = choose_ids(ids, 5)
    assert a == choose_ids(list(reversed(ids)), 5) and len(a) == 5 and choose_ids(ids, 0) == []


def test_cli_leaderboard_writes_pages_and_states_the_command(real, tmp_path, capsys):
    _, _, out, _, _ = real
    rc = main(["leaderboard", str(out), "--out", str(tmp_path / "lb"), "--format", "md,html", "--sort", "fn_ratio"])
    assert rc == 0
    md = (tmp_path / "lb" / "README.md").read_text()
    assert f"wsss-bench leaderboard {out} --out {tmp_path / 'lb'} --format md,html --sort fn_ratio" in md
    assert f"Protocol version {PROTOCOL_VERSION} (`docs/protocol.md`; methods: `docs/methods.md`)" in md
    assert not (tmp_path / "lb" / "leaderboard.csv").exists()


def test_runs_with_the_same_label_stay_distinct(tmp_path):
    a = hand_record(tmp_path / "x" / "cam.json", "cam", 0.5, [0.5, 0.4], method="cam")
    b = hand_record(tmp_path / "y" / "cam.json", "cam", 0.6, [0.6, 0.7], method="cam")
    c = hand_record(tmp_path / "y" / "cam2.json", "cam", 0.7, [0.7, 0.7], method="cam")
    build_leaderboard([a, b, c], tmp_path / "lb", formats=("json",))
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    (g,) = doc["groups"]
    labels = [r["label"] for r in g["rows"]]
    assert len(set(labels)) == 3
    expected = ([70, 70], [60, 70], [50, 40])
    assert [g["per_class_iou_pct"][lab] for lab in labels] == [pytest.approx(v) for v in expected]
