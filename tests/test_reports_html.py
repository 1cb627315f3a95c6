"""The HTML leaderboard in headless Chromium: loads without console errors, shows every method,
its sorting script orders a column in the metric's better direction, and the main table is fully
visible (no horizontal scrolling, nothing clipped) at 1280, 1400 and 1920 px."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from reports_helpers import make_voc, pseudo_record

from wsss_bench.reports import build_leaderboard

EVIL = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def run_chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


class _Rows(HTMLParser):
    """Text of every cell of the first leaderboard table, row by row."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self._in = self._cell = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "leaderboard" in (a.get("class") or "") and not self._done:
            self._in = True
        elif self._in and tag == "th":
            self.headers.append(a.get("data-key", ""))
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag == "td":
            self._cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table" and self._in:
            self._in, self._done = False, True
        elif tag == "td":
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.rows[-1][-1] += data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    root, _ = make_voc(tmp / "voc", n=6)
    out = tmp / "records"
    for m, q, s in (("cam", 0.35, 1), ("edam", 0.5, 2), (EVIL, 0.45, 3), ("more", 0.3, 4)):
        pseudo_record(root, out, m, q, s)
    build_leaderboard([out], tmp / "lb", formats=("html",), ci=True, ci_samples=100, samples=2)
    return tmp, tmp / "lb" / "index.html"


def test_page_loads_without_console_errors_and_shows_every_method(page):
    tmp, html_path = page
    res = run_chromium(html_path, tmp, "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == []
    p = _Rows()
    p.feed(res.stdout)
    methods = {r[p.headers.index("method")] for r in p.rows if r}
    assert methods == {"CAM", "EDAM", EVIL, "MoRe"}  # paper names; the hostile name is shown as text, not run
    assert res.stdout.count("<script") == 1  # only the page's own sorting script exists in the DOM


def test_sorting_script_orders_by_the_clicked_metric(page):
    tmp, html_path = page
    text = html_path.read_text()
    click = "<script>document.querySelector('th[data-key=\"fn_ratio\"]').click();</script>"
    clicked = tmp / "clicked.html"
    clicked.write_text(text.replace("</body>", click + "</body>"))
    res = run_chromium(clicked, tmp, "--dump-dom")
    assert [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln] == []
    p = _Rows()
    p.feed(res.stdout)
    col = p.headers.index("fn_ratio")
    values = [float(r[col]) for r in p.rows if r]
    assert values == sorted(values)  # FN ratio: lower is better, so the first click sorts ascending
    assert re.search(r'<th[^>]*class="[^"]*sorted-asc[^"]*"[^>]*data-key="fn_ratio"', res.stdout)


MEASURE = """<script>
window.addEventListener('load', function(){
  var out = [];
  document.querySelectorAll('table.leaderboard').forEach(function(t){
    var wrap = t.parentElement, r = t.getBoundingClientRect();
    out.push([Math.round(r.left), Math.round(r.right), wrap.scrollWidth, wrap.clientWidth,
              document.documentElement.clientWidth].join(','));
  });
  document.body.setAttribute('data-fit', out.join(';'));
});
</script>"""


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_main_table_is_fully_visible(page, width):
    tmp, html_path = page
    measured = tmp / f"measure-{width}.html"
    measured.write_text(html_path.read_text().replace("</body>", MEASURE + "</body>"))
    res = run_chromium(measured, tmp, f"--window-size={width},1600", "--dump-dom")
    fit = re.search(r'data-fit="([^"]*)"', res.stdout).group(1)
    for table in fit.split(";"):
        left, right, scroll_w, client_w, page_w = map(int, table.split(","))
        assert left >= 0 and right <= page_w, (width, table)  # inside the window
        assert scroll_w <= client_w, (width, table)  # the wrapper does not scroll: no column is hidden


def test_screenshot_renders(page):
    tmp, html_path = page
    shot = tmp / "shot.png"
    res = run_chromium(html_path, tmp, f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars")
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
