"""The launch settings and the pieces of the Slurm launcher that need no cluster (tests/slurm needs one)."""

from __future__ import annotations

import io
import os
import signal

import pytest

from esvit.config import ConfigError
from esvit.launch import submit
from esvit.launch.signals import GracefulStop
from esvit.launch.submit import LaunchError, _gpus, executor_for, follow
from esvit.train.config import load_train_config


@pytest.mark.parametrize(
    "gres,n",
    [("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("(null)", 0), ("gpu:h100:8,shard:16", 8), ("tmpdisk:100,gpu:2", 2)],
)
def test_gpus_per_node_from_sinfo_gres(gres, n):
    assert _gpus(gres) == n


def test_site_file_sits_under_the_config_and_overrides(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("partition: gpu\nnodes: 4\ngpus_per_node: 8\n")
    run = tmp_path / "run.yaml"
    run.write_text("launch:\n  nodes: 2\n")
    cfg = load_train_config(run, ["launch.account=lab"], site=site)
    assert (cfg.launch.partition, cfg.launch.nodes, cfg.launch.account, cfg.launch.tasks()) == ("gpu", 2, "lab", 8)


def test_site_file_with_an_unknown_key_is_refused(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("partiton: gpu\n")
    with pytest.raises(ConfigError, match=r"unknown launch keys \['partiton'\]"):
        load_train_config(None, site=site)


def test_one_task_per_gpu_is_enforced():
    with pytest.raises(ConfigError, match="one task per GPU"):
        load_train_config(None, ["launch.gpus_per_node=4", "launch.tasks_per_node=2"])
    assert load_train_config(None, ["launch.tasks_per_node=3"]).launch.tasks() == 3  # CPU tasks


def test_executor_gets_every_setting_into_the_sbatch_script(tmp_path):
    cfg = load_train_config(
        None,
        [
            "launch.nodes=4",
            "launch.gpus_per_node=8",
            "launch.cpus_per_task=12",
            "launch.mem_gb=480",
            "launch.timeout_min=2880",
            "launch.account=lab",
            "launch.qos=high",
            "launch.constraint=h100",
            "launch.signal_delay_s=180",
            "launch.sbatch={exclusive: true, reservation: r1}",
            "launch.setup=[module load cuda]",
        ],
    )
    ex = executor_for(cfg.launch, tmp_path, "gpu", tmp_path / "swin_b")
    script = ex._executor._make_submission_file_text("python -m x", "uid")  # the sbatch file submitit would write
    for flag in [
        "--nodes=4",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=12",
        "--mem=480GB",
        "--time=2880",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--constraint=h100",
        "--signal=USR2@180",
        "--exclusive",
        "--reservation=r1",
        "--requeue",
        "--job-name=esvit-swin_b",
    ]:
        assert f"#SBATCH {flag}" in script, (flag, script)
    assert "module load cuda" in script


def test_graceful_stop_waits_for_the_step_boundary_and_names_the_signal():
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        stop = GracefulStop().install()
        assert stop() == 0
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop() == 1 and stop.caught == signal.SIGUSR2
        os.kill(os.getpid(), signal.SIGTERM)  # a cancel during the time-limit stop: no requeue then
        assert stop() == 2 and stop.caught == signal.SIGTERM
        quiet = GracefulStop()  # a rank that caught nothing takes the ranks' verdict
        quiet.agree(2)
        assert quiet.caught == signal.SIGTERM
        timed = GracefulStop()
        timed.caught = signal.SIGUSR2
        timed.agree(2)  # another rank is being cancelled: the strongest signal wins everywhere
        assert timed.caught == signal.SIGTERM
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _states(monkeypatch, states):
    """job_state answers ``states`` in turn (the last one for ever) and time advances one second per poll."""
    seq, clock = list(states), [0.0]
    monkeypatch.setattr(submit, "job_state", lambda job_id: seq.pop(0) if len(seq) > 1 else seq[0])
    monkeypatch.setattr(submit.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(submit.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))


def test_follow_rides_out_a_requeue_that_flickers_through_failed(tmp_path, monkeypatch):
    """Slurm can report a self-requeueing job FAILED for a moment before it is PENDING again (seen on CI)."""
    _states(monkeypatch, ["RUNNING", "COMPLETING", "FAILED", "FAILED", "PENDING", "RUNNING", "COMPLETED"])
    (tmp_path / "slurm").mkdir()
    (tmp_path / "final.pth").write_bytes(b"x")
    (tmp_path / "done.json").write_text("{}")
    out = io.StringIO()
    assert follow("7", tmp_path, poll_s=1, out=out, settle_s=5) == tmp_path / "final.pth"
    assert "job 7 FAILED" in out.getvalue() and out.getvalue().rstrip().endswith("job 7 COMPLETED")


def test_follow_reports_an_end_state_once_it_has_held(tmp_path, monkeypatch):
    _states(monkeypatch, ["RUNNING", "FAILED"])
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "7_0_log.err").write_text("Traceback\nValueError: bad shard\n")
    with pytest.raises(LaunchError, match="job 7 ended FAILED: ValueError: bad shard"):
        follow("7", tmp_path, poll_s=1, out=io.StringIO(), settle_s=5)
    assert submit.time.monotonic() >= 5 + 1  # it waited settle_s past the first FAILED


def test_a_total_batch_the_job_shape_cannot_split_is_refused_before_submitting(tmp_path, monkeypatch):
    cfg = load_train_config(
        "configs/paper/swin_tiny_w7.yaml", ["launch.launcher=slurm", "launch.nodes=3", "launch.gpus_per_node=1"]
    )
    monkeypatch.setattr(submit, "preflight", lambda lc: pytest.fail("preflight ran: the shape should be refused first"))
    with pytest.raises(ConfigError, match="optim.total_batch_size 512 cannot be split over 3 processes"):
        submit.submit_or_reattach(cfg, tmp_path, io.StringIO())
    assert not (tmp_path / "slurm").exists()
