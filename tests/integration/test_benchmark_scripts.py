"""The prepared GPU benchmark script (benchmarks/gpu.sh) on a machine without a GPU: it says so, and its CPU dry
run goes through every step (minutes: it runs the real benchmarks at small sizes)."""

from __future__ import annotations


def test_gpu_script_without_a_gpu_says_so_and_its_cpu_dry_run_completes(tmp_path):
    """benchmarks/gpu.sh on this CPU machine: a clear message and exit 3, or with ESVIT_BENCH_CPU=1 the same
    steps at toy sizes, the JSON lines written and the summary printed."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, env_with_python

    env = {**env_with_python(), "PYTHON": sys.executable, "OUT": str(tmp_path)}
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True)
        assert (
            proc.returncode == 3 and "no CUDA device is visible" in proc.stderr and "ESVIT_BENCH_CPU=1" in proc.stderr
        )
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh"],
        cwd=REPO,
        env={**env, "ESVIT_BENCH_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MFU" in proc.stdout and "inference batch" in proc.stdout and "loader (core)" in proc.stdout
    assert "probe (2000 x 32, 5 classes) on cpu" in proc.stdout, proc.stdout
    for name in ("train", "infer", "loader", "probe"):
        assert (tmp_path / f"{name}.jsonl").exists()
    assert os.path.getsize(tmp_path / "infer.jsonl") > 0
