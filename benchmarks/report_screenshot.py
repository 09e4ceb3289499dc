"""Make the README's report screenshot: run a scenario, render its report.html in headless
Chromium, keep the top of the page, and save it as a small palette PNG.

    python benchmarks/report_screenshot.py                      # split-brain, full size, sim
    python benchmarks/report_screenshot.py --scenario rolling-restart --out docs/rr.png

Needs the `plot` extra (matplotlib, Pillow) and Debian's `chromium`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="split-brain")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report-split-brain.png"))
    ap.add_argument("--page", default=None, help="an existing report.html instead of a new run")
    ap.add_argument("--height", type=int, default=1800, help="pixels of the page to keep")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--colours", type=int, default=96, help="palette size of the PNG")
    args = ap.parse_args()
    from PIL import Image

    from edgekv.testnet.html import headless_chromium

    with tempfile.TemporaryDirectory() as tmp:
        if args.page is None:
            run = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "edgekv", "experiment", args.scenario, "--out", str(run)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            page_path = run / "report.html"
        else:
            page_path = Path(args.page).resolve()
        shot = Path(tmp) / "shot.png"
        chromium = headless_chromium(Path(tmp) / "profile")
        if chromium is None:
            raise SystemExit("needs chromium (Debian: apt-get install -y chromium)")
        size = f"--window-size={args.width},{args.height}"
        page = page_path.as_uri()
        subprocess.run(
            [*chromium, size, f"--screenshot={shot}", page], check=True, capture_output=True
        )
        img = Image.open(shot).convert("RGB")
        small = img.quantize(colors=args.colours, method=Image.Quantize.MEDIANCUT)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        small.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
