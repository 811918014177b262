"""report.html opened in a real headless Chromium (Debian's `chromium`, installed by `scripts/install.sh test`):
the DOM after load says every table and image rendered, and a screenshot is written for a human to look at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from PIL import Image


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "Debian's chromium is not installed (`bash scripts/install.sh test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # never skipped on CI
        pytest.skip(msg)
    return exe


def _run(exe: str, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)


# after load, record on <body> what rendered (rows, tables, images with a decoded size), for --dump-dom to show
PROBE = (
    "<script>window.addEventListener('load',()=>{const im=[...document.images];"
    "document.body.dataset.rows=`${document.querySelectorAll('table tbody tr').length}`;"
    "document.body.dataset.images=`${im.filter(i=>i.complete&&i.naturalWidth>0).length}/${im.length}`;"
    "document.body.dataset.tables=`${document.querySelectorAll('table').length}`;});</script>"
)


def test_report_renders_tables_and_images_in_chromium(results, tmp_path):
    from esvit.report import build_report

    exe = _chromium()
    files = build_report(results, tmp_path / "report")
    page = files["report.html"].read_text()
    assert "<script" not in page  # the page itself runs nothing
    probed = tmp_path / "probed.html"  # a copy with the test's probe in its head
    probed.write_text(page.replace("</head>", PROBE + "</head>", 1))
    url = probed.resolve().as_uri()
    dom = _run(exe, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    images = re.search(r'data-images="(\d+)/(\d+)"', body)
    assert images, f"the page's load handler did not run: {body}"
    assert int(images.group(2)) == 3 and images.group(1) == images.group(2)  # every figure decoded
    assert int(re.search(r'data-tables="(\d+)"', body).group(1)) >= 5
    assert int(re.search(r'data-rows="(\d+)"', body).group(1)) > 20
    shot = tmp_path / "report.png"
    proc = _run(exe, f"--screenshot={shot}", "--window-size=1280,2400", files["report.html"].resolve().as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        colours = im.convert("L").getextrema()
        assert colours[0] < 100 < colours[1]  # not a blank page
    keep = os.environ.get("ESVIT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
