"""report.html in a real browser: Debian's headless Chromium (installed by .ci/run when missing).

Checks that the page loads without console errors, that the summary, the fault table and every
plot are there and every plot image decodes, and saves a screenshot.  Chromium runs with no
network and a throwaway profile; nothing is downloaded.  Skipped (with the reason) where
Chromium or matplotlib is not installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from edgekv.testnet import plot
from edgekv.testnet.html import headless_chromium
from edgekv.testnet.report import write_report
from synthetic_report import synthetic_report

CHROMIUM = headless_chromium(Path("unused"))
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium binary (Debian: apt-get install -y chromium; .ci/run does it)",
    ),
    pytest.mark.skipif(not plot.available(), reason="matplotlib (the plot extra) missing"),
]

# Injected into a copy of the page only: after load, every <img> must have decoded.
CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  if (bad.length) console.error("broken images: " + bad.join(", "));
  document.body.setAttribute("data-decoded", String(imgs.length - bad.length));
});
</script></body>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = headless_chromium(tmp / "profile")
    assert base is not None
    argv = [*base, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _console(stderr: str) -> list[str]:
    """Every console message the page produced (the page has no script of its own)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_page_in_headless_chromium(tmp_path: Path) -> None:
    paths = write_report(synthetic_report(6), tmp_path / "out")
    page = paths[1]

    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == [], "console output while loading report.html"
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000

    checked = tmp_path / "out" / "checked.html"
    checked.write_text(page.read_text().replace("</body>", CHECK))
    run = _chromium(tmp_path, "--dump-dom", checked.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == [], "console errors (broken images?)"
    dom = run.stdout
    decoded = re.search(r'data-decoded="(\d+)"', dom)
    assert decoded is not None and int(decoded.group(1)) == len(plot.PLOTS)
    for name in plot.PLOTS:
        assert f'id="plot-{name}"' in dom
    for section in ("summary", "assertions", "faults", "scenario"):
        assert f'id="{section}"' in dom
    assert "<b>F1</b>" in dom and "<b>F2</b>" in dom


def test_console_errors_are_seen(tmp_path: Path) -> None:
    """The console check can fail: a page with an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>nope();</script></body></html>")
    run = _chromium(tmp_path, "--dump-dom", bad.as_uri())
    assert any("nope is not defined" in line for line in _console(run.stderr))
