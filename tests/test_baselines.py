"""Published numbers: machine-readable, every row sourced, the stated numbers present, AD-CAM empty."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from wsss_bench.errors import WsssBenchError
from wsss_bench.reports.baselines import COLUMNS, default_path, load_baselines, matching

CSV = Path(__file__).resolve().parents[1] / "baselines" / "published.csv"


def test_loader_agrees_with_the_csv_module():
    df = load_baselines()
    with open(CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(df) == len(rows) and tuple(df.columns) == COLUMNS and default_path() == CSV
    for (_, got), ref in zip(df.iterrows(), rows, strict=True):
        assert got["method"] == ref["method"] and got["source"] == ref["source"]
        assert (math.isnan(got["miou"]) if ref["miou"] == "" else got["miou"] == float(ref["miou"]))


def test_every_row_names_its_source_and_what_it_includes():
    df = load_baselines()
    assert (df["source"].str.len() > 0).all() and (df["includes"].str.len() > 0).all()
    assert df["source_url"].str.startswith("https://").all()
    assert set(df["method"]) == {"cam", "edam", "getam", "ad-cam", "more", "toco"}


@pytest.mark.parametrize(("method", "dataset", "split", "stage", "variant", "miou"), [
    ("cam", "voc", "train", "pseudo_label", "", 48.3),
    ("cam", "voc", "train", "pseudo_label", "irn", 66.5),
    ("edam", "voc", "train", "pseudo_label", "", 52.83),
    ("edam", "voc", "train", "pseudo_label", "crf", 58.61),
    ("edam", "voc", "train", "pseudo_label", "crf+saliency", 68.11),
    ("edam", "voc", "val", "segmentation", "deeplabv2", 70.96),
    ("edam", "voc", "test", "segmentation", "deeplabv2", 70.6),
    ("getam", "voc", "val", "segmentation", "end-to-end", 71.7),
    ("getam", "voc", "test", "segmentation", "end-to-end", 72.3),
    ("getam", "coco", "val", "segmentation", "end-to-end", 36.4),
    ("more", "voc", "val", "segmentation", "end-to-end", 76.4),
    ("more", "voc", "test", "segmentation", "end-to-end", 75.0),
    ("more", "coco", "val", "segmentation", "end-to-end", 47.4),
    ("toco", "voc", "val", "segmentation", "end-to-end ms+crf", 71.1),
])
def test_published_numbers_present(method, dataset, split, stage, variant, miou):
    rows = matching(load_baselines(), method, dataset, split, stage)
    assert miou in set(rows[rows["variant"] == variant]["miou"])


def test_adcam_records_no_number_because_its_abstract_states_none():
    df = load_baselines()
    ad = df[df["method"] == "ad-cam"]
    assert len(ad) == 1 and math.isnan(ad.iloc[0]["miou"]) and "abstract" in ad.iloc[0]["source"]


def test_malformed_baselines_are_errors_naming_the_file(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("method,miou\ncam,48.3\n")
    with pytest.raises(WsssBenchError, match="lack columns") as e:
        load_baselines(p)
    assert str(p) in str(e.value)
    rows = CSV.read_text().splitlines()
    p.write_text("\n".join([rows[0], rows[1].replace("48.3", "forty")]) + "\n")
    with pytest.raises(WsssBenchError, match="must be a number"):
        load_baselines(p)


def test_verified_in_points_at_the_projects_own_documents():
    df = load_baselines()
    assert set(df["verified_in"]) == {"abstract", "repository README", "docs/methods.md notes"}
    readme = (CSV.parent / "README.md").read_text()
    assert "docs/methods.md" in readme and "METHODS.md" not in readme.replace("docs/methods.md", "")
