"""The package works as a wheel (no source checkout): its registries and reference tables are package data.

The wheel is built from this checkout and installed with ``pip install --target`` (not editable); the commands
then run from a folder outside the checkout with only that install on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, a work folder outside the checkout) with the wheel installed into the site folder."""
    base = tmp_path_factory.mktemp("wheel")
    build = base / "src"  # build from a copy: the checkout's own build/ and egg-info are left alone
    shutil.copytree(
        REPO,
        build,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "results", "build", "*.egg-info", "__pycache__", ".snakemake", "tests"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(build)], check=True
    )
    (wheel,) = (base / "dist").glob("esvit-*.whl")
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work = base / "work"
    work.mkdir()
    return site, work


def _run(installed, *code_or_args: str, module: bool = True) -> subprocess.CompletedProcess:
    site, work = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = [sys.executable, "-m", "esvit", *code_or_args] if module else [sys.executable, "-c", *code_or_args]
    return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_data_and_imports_from_the_install(installed):
    site, _ = installed
    for name in ("datasets.yaml", "releases.yaml", "paper_results.csv", "transfer_datasets.csv"):
        assert (site / "esvit" / "resources" / name).is_file(), name
    out = _run(installed, "import esvit.data, esvit.report; print(esvit.__file__)", module=False)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)


def test_sources_lists_the_transfer_registry(installed):
    out = _run(installed, "sources")
    assert out.returncode == 0, out.stderr
    for name in ("fashion_mnist", "food101", "voc2007"):  # a packaged source and two from the registry
        assert name in out.stdout


def test_config_with_a_release_loads(installed):
    site, work = installed
    config = {
        "datasets": {"digits": {"source": "digits", "splits": ["train", "test"]}},
        "runs": {"swin_t": {"release": "swin_tiny_w7_vr"}},
        "eval": {"datasets": ["digits"]},
    }
    (work / "config.json").write_text(json.dumps(config))
    code = (
        "import json; from esvit.config import load_config; "
        "cfg = load_config(json.load(open('config.json')), check_paths=False); "
        "r = cfg.runs['swin_t']; print(r.arch, r.checkpoint_format)"
    )
    out = _run(installed, code, module=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["swin_tiny_w7", "official"]


def test_report_builds_beside_the_papers_numbers(installed, results):
    out = _run(installed, "report", "--results", str(results), "--out", str(results / "report"))
    assert out.returncode == 0, out.stderr
    summary = (results / "report" / "summary.md").read_text()
    assert "78.1" in summary  # the paper's Swin-T/W7 V+R linear top-1, read from the installed paper_results.csv
    assert (results / "report" / "report.html").stat().st_size > 0
