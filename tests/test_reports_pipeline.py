"""The whole pipeline per method (issue 21): pseudo-label mIoU beside the final mIoU of the segmenter
trained on those labels, beside the published numbers; the training loss plot on the HTML page.

Records are built as ``train-seg`` writes them: ``kind: segmentation`` on ``val`` with a
``pipeline`` block naming the pseudo-label record and a ``training`` block naming a JSON-lines log
and a loss plot (paths written relative to the record by ``write_record``).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib
import pytest
from reports_helpers import make_voc, pseudo_record, segmentation_record

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wsss_bench.records import read_record  # noqa: E402
from wsss_bench.reports import build_leaderboard  # noqa: E402


def _training_files(folder: Path, name: str, losses: list[float]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.jsonl"
    log.write_text("".join(json.dumps({"iteration": i + 1, "loss": v}) + "\n" for i, v in enumerate(losses)))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(range(1, len(losses) + 1), losses)
    plot = folder / f"{name}-loss.png"
    fig.savefig(plot)
    plt.close(fig)
    return log, plot


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    root, _ = make_voc(tmp / "voc", n=6)
    out = tmp / "records"
    pseudo = {m: pseudo_record(root, out, m, q, s) for m, q, s in (("edam", 0.5, 1), ("cam", 0.35, 2))}
    segs = {}
    for method, seed, losses in (("edam", 3, [2.0, 1.2, 0.7]), ("cam", 4, [2.1, 1.5, 1.1])):
        prec = json.loads(pseudo[method].read_text())
        log, plot = _training_files(tmp / "train" / method, f"{method}-deeplabv2", losses)
        segs[method] = segmentation_record(
            root, out, f"{method}-deeplabv2-voc", seed, segmenter="deeplabv2",
            pipeline={"method": method, "pseudo_record": pseudo[method].stem, "pseudo_fingerprint": prec["fingerprint"],
                      "pseudo_miou": prec["metrics"]["miou"], "threshold": prec["best_threshold"],
                      "recipe": "deeplabv2-voc-tiny", "segmenter": "deeplabv2"},
            training={"log": str(log), "loss_plot": str(plot) if method == "edam" else None,
                      "iterations": 3, "seconds": 12.5})
    lb = tmp / "lb"
    build_leaderboard([out], lb, formats=("md", "html", "json"))
    return tmp, out, pseudo, segs, lb


def test_training_paths_are_stored_relative_and_read_back_absolute(pipeline):
    tmp, _, _, segs, _ = pipeline
    raw = json.loads(segs["edam"].read_text())
    assert raw["training"]["log"] == "../train/edam/edam-deeplabv2.jsonl"
    assert raw["training"]["loss_plot"] == "../train/edam/edam-deeplabv2-loss.png"
    back = read_record(segs["edam"])
    assert Path(back["training"]["loss_plot"]) == tmp / "train" / "edam" / "edam-deeplabv2-loss.png"


def test_pipeline_table_puts_pseudo_final_and_published_side_by_side(pipeline):
    _, _, pseudo, segs, lb = pipeline
    doc = json.loads((lb / "leaderboard.json").read_text())
    (seg,) = [g for g in doc["groups"] if g["kind"] == "segmentation"]
    rows = {r["method"]: r for r in seg["pipeline"]}
    assert set(rows) == {"EDAM", "CAM"}
    for method, name in (("edam", "EDAM"), ("cam", "CAM")):
        prec = json.loads(pseudo[method].read_text())
        srec = json.loads(segs[method].read_text())
        row = rows[name]
        assert row["pseudo-label record"] == pseudo[method].stem
        assert row["pseudo-label mIoU (%)"] == f"{100 * prec['metrics']['miou']:.1f}"
        assert row["final mIoU (%)"] == f"{100 * srec['metrics']['miou']:.1f}"
        assert row["threshold"] == f"{prec['best_threshold']:.2f}"
        assert row["recipe"] == "deeplabv2-voc-tiny" and row["segmenter"] == "DeepLab-v2"
        assert row["iterations"] == "3" and row["training time (s)"] == "12"
    # published numbers of the method, from baselines/published.csv
    assert rows["EDAM"]["published pseudo-label mIoU (%)"] == "52.83 (train); 58.61 (crf, train); 68.11 (crf+saliency, train)"
    assert rows["EDAM"]["published final mIoU (%)"] == "70.96 (deeplabv2)"
    assert rows["CAM"]["published final mIoU (%)"] == "-"
    # the main segmentation table names the pipeline and shows the pseudo-label mIoU column
    main = {r["method"]: r for r in seg["rows"]}
    assert set(main) == {"EDAM \u2192 DeepLab-v2", "CAM \u2192 DeepLab-v2"}
    prec = json.loads(pseudo["edam"].read_text())
    assert main["EDAM \u2192 DeepLab-v2"]["pseudo_miou_pct"] == pytest.approx(100 * prec["metrics"]["miou"])
    assert main["EDAM \u2192 DeepLab-v2"]["published_miou_pct"] == "70.96 (deeplabv2)"


def test_html_shows_the_pipeline_and_embeds_the_loss_plot(pipeline):
    tmp, _, _, _, lb = pipeline
    page = (lb / "index.html").read_text()
    assert "Pipeline: pseudo labels &rarr; trained segmenter" in page
    plot = tmp / "train" / "edam" / "edam-deeplabv2-loss.png"
    assert base64.b64encode(plot.read_bytes()).decode("ascii") in page  # the training's own PNG, embedded
    assert "Training loss of EDAM \u2192 DeepLab-v2" in page and "3 iterations" in page
    md = (lb / "README.md").read_text()
    assert "](../train/edam/edam-deeplabv2-loss.png)" in md  # relative to the leaderboard folder
    assert "[cam-deeplabv2.jsonl](../train/cam/cam-deeplabv2.jsonl)" in md  # CAM: a log but no plot


def test_a_missing_loss_plot_is_a_note_not_an_error(pipeline, tmp_path):
    import shutil

    tmp, out, _, _, _ = pipeline
    copy = tmp_path / "copy"
    shutil.copytree(out, copy / "records")
    shutil.copytree(tmp / "train", copy / "train")
    (copy / "train" / "edam" / "edam-deeplabv2-loss.png").unlink()
    build_leaderboard([copy / "records"], copy / "lb", formats=("html",))
    page = (copy / "lb" / "index.html").read_text()
    assert re.search("Loss plot of EDAM \u2192 DeepLab-v2[^<]* not found: [^<]*edam-deeplabv2-loss.png", page)
