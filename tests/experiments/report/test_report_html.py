"""report.html in a real browser: headless Chromium loads the page (skipped when no Chromium is
installed) and a small script reports broken images and whether the page is wider than the
window. The checker is tested on a page that is broken on purpose, so it can fail."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dipnet.experiments.report import build_report
from report_synthetic import write_sweep

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome",
                                          "google-chrome-stable") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")

# Runs after the page and its images have loaded; appends its findings to the DOM, which
# --dump-dom prints. The marker is split so the regex below cannot match this source text.
_CHECK = """<script>window.addEventListener('load', function () {
  var broken = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (!im.complete || im.naturalWidth === 0) broken.push(im.alt || String(i));
  }
  var pre = document.createElement('pre');
  pre.id = 'dipnet' + '-check';
  pre.textContent = JSON.stringify({images: document.images.length, broken: broken,
      scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth});
  document.body.appendChild(pre);
});</script>"""


def render(page: Path, width: int, tmp: Path) -> dict:
    """Load ``page`` at a window ``width`` px wide; return the check's findings."""
    probe = tmp / f"probe_{width}.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>"),
                     encoding="utf-8")
    out = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},900", "--virtual-time-budget=10000",
         f"--user-data-dir={tmp / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="dipnet-check">(.*?)</pre>', out.stdout, re.S)
    assert m, f"Chromium printed no result: {out.stderr[-1500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    write_sweep(root, lambda m, s, p: 0.8 + 0.01 * s + 0.003 * (m == "dipnet"),
                methods=("standard", "dipnet", "sam", "input_noise"), evaluation=True)
    return build_report(root)


@pytest.mark.parametrize("width", [1280, 800])
def test_report_html_has_no_broken_image_and_fits_the_window(report, width, tmp_path):
    found = render(report.html, width, tmp_path)
    assert found["images"] == len(report.figures) >= 10
    assert found["broken"] == []
    assert found["scrollWidth"] <= found["innerWidth"], found


def test_the_check_catches_a_broken_image_and_a_wide_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img alt="gone" src="data:image/png;base64,AAAA">'
                   '<div style="width:3000px">wide</div></body></html>', encoding="utf-8")
    found = render(bad, 1024, tmp_path)
    assert found["broken"] == ["gone"]
    assert found["scrollWidth"] > found["innerWidth"]
