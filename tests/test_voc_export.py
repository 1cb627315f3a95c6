"""VOC test-server export: validated palette PNGs at the server's paths, deterministic archive."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from wsss_bench.cli import main
from wsss_bench.data.classes import VOC
from wsss_bench.errors import WsssBenchError
from wsss_bench.io import write_index_png
from wsss_bench.reports import export_voc_test


def _preds(tmp_path, ids, size=(6, 8), grey=False):
    d = tmp_path / "pred"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    masks = {}
    for i in ids:
        m = rng.integers(0, 21, size).astype(np.uint8)
        write_index_png(d / f"{i}.png", m, None if grey else VOC.palette)
        masks[i] = m
    return d, masks


def _voc_root(tmp_path, ids, size=(6, 8)):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in ids:
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_archive_holds_palette_pngs_with_the_same_values(tmp_path):
    ids = ["2008_000001", "2008_000002"]
    d, masks = _preds(tmp_path, ids, grey=True)
    out = export_voc_test(d, tmp_path / "results.tar.gz", data_root=_voc_root(tmp_path, ids))
    with tarfile.open(out) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        assert names == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids]
        for i in ids:
            im = Image.open(io.BytesIO(tar.extractfile(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png").read()))
            assert im.mode == "P"
            assert np.array_equal(np.asarray(im), masks[i])
            pal = np.asarray(im.getpalette(), dtype=np.uint8).reshape(-1, 3)
            assert np.array_equal(pal[:21], VOC.palette[:21])


def test_export_is_deterministic(tmp_path):
    d, _ = _preds(tmp_path, ["a1", "b2"])
    one = export_voc_test(d, tmp_path / "1.tar.gz", comp="comp5").read_bytes()
    two = export_voc_test(d, tmp_path / "2.tar.gz", comp="comp5").read_bytes()
    assert one == two
    with tarfile.open(tmp_path / "1.tar.gz") as tar:
        assert "results/VOC2012/Segmentation/comp5_test_cls/a1.png" in tar.getnames()


def test_missing_prediction_wrong_value_or_size_write_nothing(tmp_path):
    ids = ["2008_000001", "2008_000002"]
    d, _ = _preds(tmp_path, ids[:1])
    root = _voc_root(tmp_path, ids)
    out = tmp_path / "r.tar.gz"
    with pytest.raises(WsssBenchError, match="missing prediction for test image '2008_000002'"):
        export_voc_test(d, out, data_root=root)
    write_index_png(d / "2008_000002.png", np.full((6, 8), 255, np.uint8), VOC.palette)
    with pytest.raises(WsssBenchError, match="mask value 255"):
        export_voc_test(d, out, data_root=root)
    write_index_png(d / "2008_000002.png", np.zeros((5, 8), np.uint8), VOC.palette)
    with pytest.raises(WsssBenchError, match="differs from the image size 8x6"):
        export_voc_test(d, out, data_root=root)
    assert not out.exists() and not list(tmp_path.glob(".r*"))


def test_cli_export(tmp_path, capsys):
    d, _ = _preds(tmp_path, ["x1"])
    assert main(["export-voc-test", str(d), "--out", str(tmp_path / "o.tar.gz")]) == 0
    assert (tmp_path / "o.tar.gz").is_file()
    assert main(["export-voc-test", str(d), "--out", str(tmp_path / "o.zip")]) == 2
    assert "tar.gz" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../../outside", "/etc/passwd", "sub/2008_000001", ".."])
def test_test_list_ids_must_stay_inside_the_root(tmp_path, bad):
    ids = ["2008_000001"]
    d, _ = _preds(tmp_path, ids)
    root = _voc_root(tmp_path, ids)
    outside = tmp_path / "outside.jpg"  # what '../../outside' would read from JPEGImages/
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(outside)
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text(f"2008_000001\n{bad}\n")
    out = tmp_path / "r.tar.gz"
    with pytest.raises(WsssBenchError, match="line 2: image id") as e:
        export_voc_test(d, out, data_root=root)
    assert "test.txt" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_a_corrupt_test_jpeg_is_one_line_naming_the_file(tmp_path, capsys):
    ids = ["2008_000001", "2008_000002"]
    d, _ = _preds(tmp_path, ids)
    root = _voc_root(tmp_path, ids)
    jpg = root / "JPEGImages" / "2008_000002.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "r.tar.gz"
    with pytest.raises(WsssBenchError, match="cannot decode image") as e:
        export_voc_test(d, out, data_root=root)
    assert e.value.path == str(jpg)
    assert main(["export-voc-test", str(d), "--data-root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {jpg}: cannot decode image") and err.count("\n") == 1
    assert not out.exists()


def test_an_unwritable_archive_path_is_one_line(tmp_path, capsys):
    d, _ = _preds(tmp_path, ["x1"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export-voc-test", str(d), "--out", str(blocker / "r.tar.gz")]) == 2
    err = capsys.readouterr().err
    # refused before any work, naming the file in the way
    assert err.startswith("error: ") and f"{blocker} is a file" in err and err.count("\n") == 1
    with pytest.raises(WsssBenchError, match="cannot write the archive"):  # the function itself, too
        export_voc_test(d, blocker / "r.tar.gz")
