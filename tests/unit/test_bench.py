"""`esvit bench` entries run at toy sizes: one JSON line on stdout, the same line appended to <out>/<name>.jsonl,
the machine described. (The figures themselves are measured at full size by hand, never asserted.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("name,args,key", [
    ("infer", ["--archs", "swin_pico,swin_nano", "--batch", "4", "--size", "64", "--steps", "1"], "img_s"),
    ("extract", ["--archs", "swin_pico:32", "--batch", "128", "--workers", "0"], "swin_pico@32_img_s"),
    ("probe", ["--n", "600", "--dim", "16", "--classes", "3", "--n-test", "200", "--separation", "0.5"], "speedup"),
])  # fmt: skip
def test_bench_writes_one_json_line_with_the_machine(name, args, key, tmp_path):
    proc = run_cli("bench", "--out", str(tmp_path), name, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["bench"] == name and key in line and {"cpu", "cores", "torch"} <= set(line["machine"])
    assert json.loads((tmp_path / f"{name}.jsonl").read_text().splitlines()[-1]) == line
    if name == "infer":
        assert set(line["img_s"]) == {"swin_pico", "swin_nano"} and min(line["img_s"].values()) > 0
    if name == "probe":
        assert abs(line["ours_acc"] - line["sklearn_acc"]) <= 2.0
