"""`esvit status` while a real local pretraining runs (its progress and ETA), and once it is done."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO, TINY, env_with_python, run_cli
from tests.conftest import status_config as _config
from tests.conftest import status_rows as _status


def test_a_local_run_is_seen_running_with_its_progress_then_done(tmp_path, digits_shards):
    overrides = [
        *TINY,
        "optim.epochs=30",
        "run.threads=1",
        "data.num_workers=0",
        "run.log_every_steps=1",
        "loss.warmup_teacher_temp=0.04",
        "loss.teacher_temp=0.04",
    ]  # a teacher neither uniform nor one-hot here
    demo = str(REPO / "configs/pretrain/demo.yaml")
    config = _config(tmp_path, {"tiny": {"config": demo, "dataset": "digits", "overrides": overrides}})
    assert _status(tmp_path, config)[0]["state"] == "not started"
    out = tmp_path / "results/pretrain/tiny"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esvit",
            "pretrain",
            "--config",
            demo,
            "--shards",
            str(digits_shards),
            "--out",
            str(out),
            "--no-progress",
            *overrides,
        ],
        cwd=tmp_path,
        env=env_with_python(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        row = _status(tmp_path, config)[0]
        if row["state"] == "running" and row["epoch"] is not None and row["epoch"] >= 1:
            running = row
            break
        time.sleep(0.5)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert running is not None, "never seen running past its first epoch"
    assert running["where"].startswith("pid ") and running["epochs"] == 30 and running["step"] > 0
    assert running["loss"] > 0 and running["img_s"] > 0 and running["eta_s"] > 0 and running["collapse"] is None
    done = _status(tmp_path, config)[0]
    assert (
        done["state"] == "done" and done["step"] == 30 * 6 and done["results_done"] == 0 and done["results_total"] == 2
    )
    table = run_cli("status", "--config", config, "--results", str(tmp_path / "results"), cwd=tmp_path).stdout
    assert table.splitlines()[0].split()[:3] == ["run", "state", "where"] and "tiny  done" in table
    assert " 30/30 " in table  # the epoch shown 1-based, of how many
    assert "missing results: knn/tiny/digits, probe/tiny/digits" in table
