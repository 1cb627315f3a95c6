"""Paired bootstrap: zero for identical runs, above zero when A wins everywhere, seeded, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from reports_helpers import make_voc, pseudo_record

from wsss_bench.cli import main
from wsss_bench.errors import WsssBenchError
from wsss_bench.metrics.functional import miou_from_counts
from wsss_bench.records import read_record, write_record
from wsss_bench.reports import paired_bootstrap
from wsss_bench.reports.bootstrap import bootstrap_difference


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    root, _ = make_voc(tmp / "voc", n=10)
    a = pseudo_record(root, tmp / "r", "edam", 0.5, 1)
    b = pseudo_record(root, tmp / "r", "cam", 0.3, 2)
    return tmp, a, b


def _counts_record(tmp, name, tp, fp, fn, **fields):
    n = tp.shape[0]
    rec = {"protocol_version": 1, "kind": "pseudo_label", "dataset": "synthetic", "split": "train",
           "num_images": n, "fingerprint": "x" * 64, "classes": ["bg", "a", "b"], "metrics": {}, "name": name}
    rec.update(fields)
    ids = np.array([f"i{k}" for k in range(n)])
    return read_record(write_record(tmp, rec, {"ids": ids, "tp": tp, "fp": fp, "fn": fn}, stem=name))


def test_identical_records_give_zero_difference_and_zero_width_interval(recs):
    _, a, _ = recs
    res = paired_bootstrap(a, a, samples=300, seed=3)
    assert res["difference"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["share_a_better"] == 0.0 and res["n_images"] == 10


def test_a_better_on_every_image_gives_an_interval_above_zero(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 30, 3
    tp = rng.integers(50, 100, (n, c))
    fp = rng.integers(1, 20, (n, c))
    fn = rng.integers(1, 20, (n, c))
    a = _counts_record(tmp_path, "a", tp + 10, np.maximum(fp - 1, 0), np.maximum(fn - 1, 0))
    b = _counts_record(tmp_path, "b", tp, fp, fn)
    res = paired_bootstrap(a, b, samples=500, seed=0)
    assert res["ci_low"] > 0 and res["difference"] > 0 and res["share_a_better"] == 1.0


def test_bootstrap_equals_a_step_by_step_loop():
    rng = np.random.default_rng(5)
    n, c, s, seed = 12, 4, 50, 11
    ca = rng.integers(0, 30, (n, 3, c))
    cb = rng.integers(0, 30, (n, 3, c))
    res = bootstrap_difference(ca, cb, samples=s, seed=seed)
    draws = np.random.default_rng(seed).integers(0, n, size=(s, n))
    diffs = []
    for k in range(s):
        sa = sum(ca[i] for i in draws[k])
        sb = sum(cb[i] for i in draws[k])
        diffs.append(float(miou_from_counts(*sa)) - float(miou_from_counts(*sb)))
    diffs = np.array(diffs)
    assert res["ci_low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    assert res["ci_high"] == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
    assert res["share_a_better"] == pytest.approx(np.mean(diffs > 0))
    ta, tb = ca.sum(0), cb.sum(0)
    assert res["difference"] == pytest.approx(float(miou_from_counts(*ta)) - float(miou_from_counts(*tb)))


def test_same_seed_same_numbers_and_observed_difference_matches_records(recs):
    _, a, b = recs
    r1 = paired_bootstrap(a, b, samples=200, seed=7)
    r2 = paired_bootstrap(a, b, samples=200, seed=7)
    r3 = paired_bootstrap(a, b, samples=200, seed=8)
    assert r1 == r2 and (r1["ci_low"], r1["ci_high"]) != (r3["ci_low"], r3["ci_high"])
    ma = json.loads(a.read_text())["metrics"]["miou"]
    mb = json.loads(b.read_text())["metrics"]["miou"]
    assert r1["difference"] == pytest.approx(ma - mb, abs=1e-12)


def test_image_order_does_not_matter(tmp_path):
    rng = np.random.default_rng(2)
    tp, fp, fn = (rng.integers(0, 40, (8, 3)) for _ in range(3))
    a = _counts_record(tmp_path, "a", tp, fp, fn)
    b = _counts_record(tmp_path, "b", tp, fp, fn)
    counts = np.load(tmp_path / "b.counts.npz")
    perm = np.arange(8)[::-1]
    np.savez(tmp_path / "b.counts.npz", **{k: counts[k][perm] for k in ("ids", "tp", "fp", "fn")})
    res = paired_bootstrap(a, b, samples=100)
    assert res["ci_low"] == 0.0 and res["ci_high"] == 0.0


def test_refuses_different_protocols_image_sets_or_images(recs, tmp_path):
    tmp, a, _ = recs
    rec = json.loads(a.read_text())
    shutil.copy(a.with_suffix("").with_suffix(".counts.npz"), tmp_path / "edam-1.counts.npz")
    for field, value, match in (("protocol_version", rec["protocol_version"] + 1, "protocol versions differ"),
                                ("fingerprint", "0" * 64, "image sets differ"),
                                ("split", "val", "split differs")):
        bad = dict(rec, **{field: value})
        p = tmp_path / "edam-1.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(WsssBenchError, match=match):
            paired_bootstrap(a, p)
    rng = np.random.default_rng(0)
    tp = rng.integers(0, 9, (4, 3))
    x = _counts_record(tmp_path, "x", tp, tp, tp)
    y = _counts_record(tmp_path, "y", tp, tp, tp)
    z = np.load(tmp_path / "y.counts.npz")
    np.savez(tmp_path / "y.counts.npz", ids=np.array(["i0", "i1", "i2", "other"]), tp=z["tp"], fp=z["fp"], fn=z["fn"])
    with pytest.raises(WsssBenchError, match="cover different images"):
        paired_bootstrap(x, y)


def test_cli_compare_prints_interval_and_refuses_with_one_line(recs, tmp_path, capsys):
    _, a, b = recs
    assert main(["compare", str(a), str(b), "--resamples", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    res = paired_bootstrap(a, b, samples=100, seed=1)
    assert f"{100 * res['difference']:+.2f} mIoU points" in out
    assert f"[{100 * res['ci_low']:+.2f}, {100 * res['ci_high']:+.2f}]" in out
    bad = json.loads(a.read_text())
    bad["protocol_version"] = 99
    p = tmp_path / "v99.json"
    p.write_text(json.dumps(bad))
    assert main(["compare", str(a), str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "protocol versions differ" in err


def test_cli_compare_old_samples_spelling_still_works_with_a_warning(recs, capsys):
    _, a, b = recs
    assert main(["compare", str(a), str(b), "--resamples", "100", "--seed", "1"]) == 0
    new = capsys.readouterr()
    assert main(["compare", str(a), str(b), "--samples", "100", "--seed", "1"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and "100 resamples" in old.out
    assert "--samples is deprecated; use --resamples" in old.err and not new.err
    assert main(["compare", str(a), str(b), "--samples", "100", "--resamples", "50"]) == 2
    assert "give --resamples only" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--resamples", "0"], ["--seed", "-1"], ["--samples", "0"]], ids=" ".join)
def test_cli_compare_refuses_out_of_range_numbers_before_reading_records(argv, capsys):
    assert main(["compare", "missing-a.json", "missing-b.json", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and argv[0] in err and "missing-a.json" not in err


def test_cli_compare_prints_method_names_with_brackets_as_they_are(recs, tmp_path, capsys):
    _, a, b = recs
    rec = json.loads(a.read_text())
    rec["method"] = "[bold]x[/bold]"
    p = tmp_path / "edam-1.json"
    p.write_text(json.dumps(rec))
    shutil.copy(a.with_suffix("").with_suffix(".counts.npz"), tmp_path / "edam-1.counts.npz")
    assert main(["compare", str(p), str(b), "--resamples", "20"]) == 0
    assert "[bold]x[/bold]" in capsys.readouterr().out
