#!/usr/bin/env bash
# How long Snakemake takes to plan (`snakemake -n`, from the repo root, nothing downloaded) the demo, the
# released-checkpoint transfer config and the paper-scale config: best of 3 wall-clock runs each, with the job
# count. Snakemake imports every installed executor plugin at start; the Slurm plugin asks `scontrol` for the
# cluster's settings then, so measure where Slurm answers (tests/slurm/up.sh) or is not installed: with a Slurm
# client whose controller is down, every plan first waits for scontrol's timeout (about 9 s here).
#
# Usage: benchmarks/plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" - <<'PY'
import re, subprocess, sys, time

print(f"{'config':24s} {'jobs':>6s} {'best of 3':>10s}")
for cfg in ("configs/config.yaml", "configs/transfer.yaml", "configs/paper.yaml"):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", cfg, "--profile", "local", "-n"],
                              capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode:
            sys.exit(f"{cfg}: snakemake -n failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    jobs = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    print(f"{cfg:24s} {jobs.group(1) if jobs else '?':>6s} {min(times):9.2f}s")
PY
