"""What every view shows: percent everywhere (said in CSV/JSON column names), peak memory from the
runner's fields, paper spelling of method names, separate tables with a visible note for another
image set, distinct curve styles, a readable qualitative grid, links to the project's documents."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from reports_helpers import hand_record, make_voc, pseudo_record

from wsss_bench.reports import METRICS, build_leaderboard
from wsss_bench.reports.names import display_name
from wsss_bench.reports.plots import curve_styles
from wsss_bench.reports.render import Leaderboard
from wsss_bench.reports.table import peak_memory


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    root, _ = make_voc(tmp / "voc", n=6)
    out = tmp / "records"
    recs = [pseudo_record(root, out, m, q, s) for m, q, s in (("edam", 0.5, 1), ("ad-cam", 0.3, 2), ("more", 0.4, 3))]
    lb = tmp / "lb"
    build_leaderboard([out], lb, ci=True, ci_samples=50, samples=3)
    return tmp, out, recs, lb


def test_csv_and_json_give_percent_and_say_so(board):
    _, _, recs, lb = board
    df = pd.read_csv(lb / "leaderboard.csv")
    doc = json.loads((lb / "leaderboard.json").read_text())
    for k, spec in METRICS.items():
        if spec.percent:
            assert k not in df.columns and f"{k}_pct" in df.columns, k
    assert "images_per_second" in df.columns and "peak_memory_mb" in df.columns  # not percent, no suffix
    for p in recs:
        rec = json.loads(p.read_text())
        row = df[df["record"] == p.name].iloc[0]
        jrow = next(r for g in doc["groups"] for r in g["rows"] if r["record"] == p.name)
        assert row["miou_best_pct"] == pytest.approx(100 * rec["metrics"]["miou"])
        assert jrow["miou_best_pct"] == pytest.approx(100 * rec["metrics"]["miou"])
        assert row["miou_calibrated_pct"] == pytest.approx(100 * rec["calibrated"]["miou"])
        valid = [v is not None for v in rec["metrics"]["iou"]]
        fn = [v for v, ok in zip(rec["metrics"]["fn_ratio"], valid, strict=True) if ok and v is not None]
        assert row["fn_ratio_pct"] == pytest.approx(100 * sum(fn) / len(fn))
        assert row["best_threshold"] == pytest.approx(rec["best_threshold"])  # a threshold stays a threshold
        if jrow["vs_top"] != "top":
            assert set(jrow["vs_top"]) >= {"difference_pct", "ci_low_pct", "ci_high_pct", "share_a_better_pct"}
    assert doc["units"] == "columns ending in _pct are percent"
    assert {p["miou_pct"] for p in doc["published"] if p["method"] == "cam"} == {48.3, 66.5}
    pc = pd.read_csv(lb / "per_class.csv")
    assert [c for c in pc.columns if c.startswith("iou_pct_")][:2] == ["iou_pct_background", "iou_pct_aeroplane"]


def test_peak_memory_comes_from_the_runner_fields(board, tmp_path):
    _, _, recs, lb = board
    df = pd.read_csv(lb / "leaderboard.csv")
    for p in recs:
        rss = json.loads(p.read_text())["timings"]["peak_rss_mb"]
        row = df[df["record"] == p.name].iloc[0]
        assert row["peak_memory_mb"] == rss and row["peak_memory_kind"] == "RSS"
    assert peak_memory({"peak_rss_mb": 900.0, "peak_device_memory_mb": 2048.5}) == (2048.5, "device")
    assert peak_memory({"peak_rss_mb": 900.0, "peak_device_memory_mb": None}) == (900.0, "RSS")
    assert peak_memory({"peak_memory_mb": 12.0, "peak_memory_kind": "device"}) == (12.0, "device")
    assert peak_memory({"peak_memory_mb": 12.0, "peak_memory_kind": "process RSS"}) == (12.0, "RSS")
    assert peak_memory({}) == (None, "")
    md = (lb / "README.md").read_text()
    assert "peak MiB (RSS) ↓" in md
    # mixed kinds: each cell says which memory it is
    a = hand_record(tmp_path / "a.json", "a", 0.5, [0.5, 0.5], timings={"peak_rss_mb": 700.0})
    b = hand_record(tmp_path / "b.json", "b", 0.4, [0.4, 0.4], timings={"peak_device_memory_mb": 3000.0,
                                                                      "peak_rss_mb": 900.0})
    build_leaderboard([a, b], tmp_path / "lb", formats=("md",))
    md = (tmp_path / "lb" / "README.md").read_text()
    assert "| 700 (RSS) |" in md and "| 3000 (device) |" in md


def test_paper_names_everywhere(board):
    _, _, _, lb = board
    md = (lb / "README.md").read_text()
    page = (lb / "index.html").read_text()
    for name in ("EDAM", "AD-CAM", "MoRe"):
        assert f"| {name} |" in md and f">{name}</td>" in page
    assert "| edam |" not in md
    assert [display_name(n) for n in ("cam", "getam", "center-prior", "deeplabv3plus", "my-plugin")] == \
        ["CAM", "GETAM", "centre prior", "DeepLab-v3+", "my-plugin"]


def test_another_image_set_gets_its_own_table_and_a_visible_note(tmp_path):
    iou = [0.9, 0.5, None]
    hand_record(tmp_path / "r" / "full.json", "full", 0.4, iou, method="cam")
    hand_record(tmp_path / "r" / "lim.json", "lim", 0.9, iou, method="edam", fingerprint="3" * 64, limit=3,
                num_images=3)
    build_leaderboard([tmp_path / "r"], tmp_path / "lb", formats=("md", "html", "json"))
    doc = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [[r["record"] for r in g["rows"]] for g in doc["groups"]] == [["full.json"], ["lim.json"]]
    assert [g["num_images"] for g in doc["groups"]] == [10, 3]
    assert all("different image set" in g["sibling_note"] for g in doc["groups"])
    md = (tmp_path / "lb" / "README.md").read_text()
    assert md.count("> **Note:** Other records of synthetic train") == 2
    assert "10 images, image set ffffffff" in md and "3 images, image set 33333333, --limit 3" in md
    page = (tmp_path / "lb" / "index.html").read_text()
    assert page.count('<p class="warn">Other records of synthetic train') == 2


def test_curve_styles_one_colour_per_method_distinct_runs_visible():
    methods = ["edam", "edam", "getam", "cam", "cam", "cam", "more"]
    st = curve_styles(methods, 100)
    colours = {m: {s["color"] for s, mm in zip(st, methods, strict=True) if mm == m} for m in set(methods)}
    assert all(len(c) == 1 for c in colours.values())  # one colour per method
    assert len({next(iter(c)) for c in colours.values()}) == 4  # and different methods differ
    cam = [s for s, m in zip(st, methods, strict=True) if m == "cam"]
    assert len({(s["linestyle"], s["marker"]) for s in cam}) == 3  # runs of one method differ
    assert len({s["markevery"][0] for s in st[:2]}) == 2  # identical curves: markers at different points
    many = curve_styles([f"m{i}" for i in range(14)], 100)
    assert len({tuple(s["color"]) for s in many}) == 14


def test_qualitative_grid_is_one_row_per_run_with_a_legend(board):
    _, _, _, lb = board
    doc = json.loads((lb / "leaderboard.json").read_text())
    (g,) = doc["groups"]
    with Image.open(lb / g["plots"]["grid"]) as im:
        w, h = im.size
        assert im.mode == "P"  # palette PNG: a fraction of the RGB size
    # 3 samples x (label, map) tiles of 160 px across, 1 + 3 rows of 120 px down, plus labels and legend
    assert 6 * 160 < w < 6 * 160 + 500 and 4 * 120 < h < 4 * 120 + 350
    assert len(g["grid_ids"]) == 3


def test_pages_cite_the_projects_own_documents(board, tmp_path):
    _, out, _, lb = board
    md = (lb / "README.md").read_text()
    page = (lb / "index.html").read_text()
    assert "PROTOCOL.md" not in md + page and "METHODS.md" not in md + page
    assert "`docs/protocol.md`" in md and "<code>docs/protocol.md</code>" in page
    # inside the source tree (a committed leaderboard), the documents are linked relatively
    repo = Path(__file__).resolve().parents[1]
    inner = Leaderboard("t", "c", METRICS["miou_best"], [], None, 0, repo / "leaderboards" / "x")
    assert inner.doc_link("protocol") == "../../docs/protocol.md"
    assert inner.doc_link("methods") == "../../docs/methods.md"
    assert Leaderboard("t", "c", METRICS["miou_best"], [], None, 0, tmp_path).doc_link("protocol") is None
