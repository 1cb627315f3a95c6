"""`wsss-bench run --stage segmentation` end to end, and CLI hyper-parameter parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.commands.run_cmd import literal
from wsss_bench.data.synthetic import generate
from wsss_bench.errors import WsssBenchError
from wsss_bench.evaluate import GroundTruth, eval_predictions
from wsss_bench.methods.cam import CAMAdapter
from wsss_bench.segmenters.registry import create_segmenter


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("s") / "shapes", num_images=8, seed=5, size=(40, 48))


def test_segmentation_stage_writes_a_record_that_matches_its_pngs(synth, tmp_path):
    torch.manual_seed(0)
    seg = create_segmenter("deeplabv2", 6, hparams={"width": 8, "blocks": [1, 1, 1, 1]})
    ckpt = tmp_path / "dl.pth"
    torch.save(seg.model.state_dict(), ckpt)
    out, pred = tmp_path / "out", tmp_path / "pred"
    rc = main(["run", "--stage", "segmentation", "--segmenter", "deeplabv2", "--checkpoint", str(ckpt),
               "--hparam", "width=8", "--hparam", "blocks=1,1,1,1", "--dataset", "synthetic",
               "--data-root", str(synth), "--split", "val", "--settings", "standard", "--out", str(out),
               "--save-pred", str(pred), "--workers", "0", "--name", "deeplabv2-standard"])
    assert rc == 0
    rec = json.loads((out / "deeplabv2-standard.json").read_text())
    assert rec["kind"] == "segmentation" and rec["segmenter"] == "deeplabv2"
    from wsss_bench.data import build_dataset

    ds = build_dataset("synthetic", synth, "val")
    for i in ds.ids:
        with Image.open(pred / f"{i}.png") as im:
            assert im.mode == "P"
            assert im.size[::-1] == ds[ds.ids.index(i)].mask.shape
    ref, _ = eval_predictions(pred, GroundTruth.from_dataset(ds))
    assert ref["metrics"]["miou"] == pytest.approx(rec["metrics"]["miou"], abs=1e-12)


def test_suite_file_mixes_stages_and_rejects_typos(synth, tmp_path, capsys):
    a = CAMAdapter(5, backbone="resnet-tiny")
    a.build()
    ckpt = tmp_path / "cam.pth"
    torch.save(a.model.state_dict(), ckpt)
    suite = tmp_path / "suite.toml"
    suite.write_text(f'''
dataset = "synthetic"
data_root = "{synth}"
workers = 0
out = "{tmp_path / 'o'}"

[[run]]
method = "cam"
backbone = "resnet-tiny"
checkpoint = "{ckpt}"

[[run]]
method = "center-prior"
settings = "standard"
scales = [1.0]
''')
    assert main(["run", str(suite)]) == 0
    names = sorted(p.name for p in (tmp_path / "o").glob("*.json"))
    assert names == ["cam-native.json", "center-prior-standard.json"]
    bad = tmp_path / "bad.toml"
    bad.write_text(f'data_root = "{synth}"\n[[run]]\nmethod = "cam"\ncheckpint = "x.pth"\n')
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "checkpint" in err and "checkpoint" in err and "bad.toml" in err


def test_cli_values_are_parsed_and_coerced():
    assert literal("1,1,2,1") == [1, 1, 2, 1]
    assert literal("0.5") == 0.5 and literal("false") is False and literal("lam") == "lam"
    from wsss_bench.methods.base import coerce_like

    assert coerce_like(True, "False", "x") is False
    assert coerce_like(2, "3", "x") == 3
    with pytest.raises(WsssBenchError, match="must be a int"):
        coerce_like(2, "two", "x")
    assert np.isclose(coerce_like(0.5, "0.25", "x"), 0.25)
