"""The LaTeX table: booktabs, \\linewidth wide, the CI column, paper spelling of method names; it
compiles without an overfull box in a single-column article when pdflatex is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from reports_helpers import make_voc, pseudo_record, segmentation_record

from wsss_bench.reports import build_leaderboard
from wsss_bench.reports.render import tex_escape

PDFLATEX = shutil.which("pdflatex")


@pytest.fixture(scope="module")
def tex(tmp_path_factory):
    """A leaderboard like the demo's: five methods at two settings, long backbone names, --ci."""
    tmp = tmp_path_factory.mktemp("tex")
    root, _ = make_voc(tmp / "voc", n=6)
    out = tmp / "records"
    runs = [("edam", 0.5, "resnet38-w0.0625"), ("getam", 0.45, "vit_hybrid_demo"), ("cam", 0.4, "resnet-tiny"),
            ("ad-cam", 0.35, "vit_tiny_demo"), ("more", 0.3, "vit_tiny_demo"), ("center-prior", 0.2, "none")]
    seed = 0
    for method, q, backbone in runs:
        for settings in ("standard", "native"):
            seed += 1
            pseudo_record(root, out, method, q, seed, backbone=backbone,
                          settings={"name": settings, "scales": [1.0], "flip": False})
    segmentation_record(root, out, "deeplabv2", 50)
    lb = tmp / "lb"
    build_leaderboard([out], lb, formats=("tex",), ci=True, ci_samples=50)
    build_leaderboard([out], tmp / "lb-noci", formats=("tex",))
    return (lb / "leaderboard.tex").read_text(), (tmp / "lb-noci" / "leaderboard.tex").read_text(), tmp


def _tables(text: str) -> list[str]:
    return re.findall(r"\\begin\{table\}.*?\\end\{table\}", text, flags=re.S)


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)&", row))


def test_structure_booktabs_linewidth_and_one_cell_per_column(tex):
    text, _, _ = tex
    tables = _tables(text)
    assert len(tables) == 2  # pseudo labels, segmentation
    for t in tables:
        assert t.count("\\toprule") == t.count("\\midrule") == t.count("\\bottomrule") == 1
        assert "\\hline" not in t
        spec = re.search(r"\\begin\{tabularx\}\{\\linewidth\}\{(.*)\}\n", t).group(1)
        bare = re.sub(r">\{(?:[^{}]|\{[^{}]*\})*\}", "", spec).replace("@{}", "")
        ncol = len(re.findall(r"[Xlrc]", bare))
        body = t.split("\\toprule")[1].split("\\bottomrule")[0].replace("\\midrule", "")
        rows = [r for r in body.split("\\\\") if r.strip()]
        assert rows and all(_cells(r) == ncol for r in rows), (ncol, rows[:2])
        assert t.count("{") == t.count("}")  # balanced braces (escaped ones come in \{ \} pairs here)
    assert "\\usepackage{booktabs,tabularx}" in text


def test_ci_column_kept_and_paper_names_used(tex):
    text, noci, _ = tex
    pseudo = _tables(text)[0]
    assert "$\\Delta$ [95\\% CI]" in pseudo and "(reference)" in pseudo
    assert re.search(r"\$-\$\d+\.\d \[\$[-+]\$\d+\.\d, \$[-+]\$\d+\.\d\]", pseudo)
    for name in ("EDAM", "GETAM", "CAM", "AD-\\allowbreak{}CAM", "MoRe", "centre prior"):
        assert name in pseudo, name
    assert "edam" not in pseudo.split("\\midrule")[1]  # no registry spelling in the rows
    assert "$\\Delta$" not in _tables(noci)[0].split("\\caption")[0] + _tables(noci)[0].split("\\toprule")[1]
    assert "DeepLab-\\allowbreak{}v2" in _tables(text)[1]


def test_escaping_covers_every_latex_special():
    assert tex_escape("a&b%c$d#e_f{g}h~i^j\\k") == (r"a\&b\%c\$d\#e\_\allowbreak{}f\{g\}h\textasciitilde{}i"
                                                    r"\textasciicircum{}j\textbackslash{}k")
    assert "\n" not in tex_escape("two\nlines")


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not installed (Debian: texlive-latex-recommended)")
@pytest.mark.parametrize("variant", ["ci", "noci"])
def test_compiles_in_a_single_column_article_without_overfull_boxes(tex, variant):
    text, noci, tmp = tex
    doc = tmp / f"doc-{variant}.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,tabularx}\n\\begin{document}\n"
                   + (text if variant == "ci" else noci) + "\n\\end{document}\n")
    res = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp,
                         capture_output=True, text=True, timeout=120)
    log = (tmp / f"doc-{variant}.log").read_text(errors="replace")
    assert res.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
    assert (tmp / f"doc-{variant}.pdf").stat().st_size > 1000
