"""Pretraining on a real Slurm cluster (tests/slurm/up.sh: slurmctld, slurmdbd, two slurmd nodes on loopback).

Nothing here is mocked: every job is a real `sbatch` job, every rank a real process on its node, the
gradients go through gloo between the two nodes, and `sacct` reads the accounting database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from esvit.checkpoint_file import load_checkpoint
from tests.conftest import POISON_RANK_1, REPO, env_with_python

pytestmark = pytest.mark.slow

PARTITION = os.environ.get("ESVIT_SLURM_PARTITION", "esvit")
# 10 steps per epoch with 2 ranks x 8 images; tiny Swin so a step takes ~0.1 s on one core
TINY = [
    "model.arch=swin_pico",
    "model.out_dim=256",
    "model.hidden_dim=64",
    "model.bottleneck_dim=32",
    "crops.global_size=32",
    "crops.local_size=[16]",
    "crops.local_number=[2]",
    "optim.batch_size_per_device=8",
    "optim.warmup_epochs=1",
    "loss.warmup_teacher_temp_epochs=1",
    "data.samples_per_epoch=160",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "run.threads=1",
    "run.tensorboard=false",
    "run.log_every_steps=2",
]
EPOCHS = 12  # 120 steps: long enough to interrupt in the middle


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def cluster() -> str:
    """The local two-node cluster; skipped with the reason where Slurm cannot run, failed on CI."""
    try:
        nodes = _sh("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t").split()
    except (FileNotFoundError, subprocess.TimeoutExpired):
        nodes = []
    if not {"n1", "n2"} <= set(nodes):
        msg = f"no local Slurm cluster with nodes n1, n2 in partition {PARTITION!r}: run `sudo tests/slurm/up.sh`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return PARTITION


@pytest.fixture(scope="module")
def site(tmp_path_factory, cluster) -> Path:
    """The site file for this cluster: 2 nodes x 1 CPU task (gloo), as a user would write it."""
    path = tmp_path_factory.mktemp("site") / "submitit.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nodes": 2,
                "gpus_per_node": 0,
                "cpus_per_task": 1,
                "partition": cluster,
                "timeout_min": 30,
                "signal_delay_s": 30,
                "poll_s": 1,
            }
        )
    )
    return path


def pretrain(out: Path, shards: Path, site: Path, *extra: str, epochs: int = EPOCHS) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "esvit",
        "pretrain",
        "--launcher",
        "slurm",
        "--site",
        str(site),
        "--shards",
        str(shards),
        "--out",
        str(out),
        *TINY,
        f"optim.epochs={epochs}",
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env_with_python(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def job_id(run: Path, timeout: float = 120) -> str:
    record = run / "slurm" / "job.json"
    deadline = time.monotonic() + timeout
    while not record.exists():
        assert time.monotonic() < deadline, f"no job submitted for {run}"
        time.sleep(0.2)
    return json.loads(record.read_text())["job_id"]


def wait_for(predicate, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def logged_steps(run: Path) -> int:
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def state(jid: str) -> str:
    return _sh("squeue", "-h", "-j", jid, "-o", "%T").strip()


def release_when_pending(jid: str) -> None:
    """Slurm holds a requeued job ~2 minutes (BeginTime); release it at once, as an admin would."""
    wait_for(lambda: state(jid) == "PENDING", f"job {jid} back in the queue")
    subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], check=True, capture_output=True)


def sacct(jid: str) -> list[tuple[str, str, str]]:
    """(job id, state, node list) of every record, requeued attempts included (-D)."""
    rows = _sh("sacct", "-n", "-P", "-D", "-X", "-j", jid, "-o", "JobID,State,NodeList").splitlines()
    return [tuple(r.split("|")) for r in rows if r.strip()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "final.pth")
    return {**{f"s.{k}": v for k, v in ckpt["student"].items()}, **{f"t.{k}": v for k, v in ckpt["teacher"].items()}}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# ------------------------------------------------------------------------------------------------- tests


def test_bad_site_settings_are_refused_before_anything_is_submitted(site, tmp_path, digits_shards):
    cases = [
        ("launch.partition=nope", "launch.partition 'nope' is not a partition of this cluster (it has: "),
        ("launch.gpus_per_node=4", "launch.gpus_per_node=4 but partition"),
        ("launch.nodes=3", "launch.nodes=3 but partition"),
        ("launch.account=no_such_account", "launch.account 'no_such_account' is not an account you can use here"),
        ("launch.cpus_per_task=64", "launch.cpus_per_task=64 x 1 task(s) per node needs 64 CPUs"),
    ]
    for override, message in cases:
        out = finish(pretrain(tmp_path / "r", digits_shards, site, override))
        assert message in out, (override, out)
        assert out.count("esvit: error:") == 1 and "Traceback" not in out
    assert not (tmp_path / "r" / "slurm" / "job.json").exists()  # nothing submitted

    env = env_with_python()
    env["PATH"] = os.path.dirname(sys.executable)  # no sbatch
    proc = subprocess.run(
        [sys.executable, "-m", "esvit", "pretrain", "--launcher", "slurm", "--out", str(tmp_path / "r")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "`sbatch` is not on PATH" in proc.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, site, digits_shards) -> Path:
    """An uninterrupted 2-node run, followed by a launcher that is stopped and then re-attaches."""
    run = tmp_path_factory.mktemp("runs") / "reference"
    first = pretrain(run, digits_shards, site, "launch.cancel_on_interrupt=false")
    jid = job_id(run)
    wait_for(lambda: state(jid) == "RUNNING", f"job {jid} running")
    first.send_signal(signal.SIGTERM)  # the launcher goes, the job stays
    out = finish(first)
    assert first.returncode != 0 and f"Slurm job {jid} keeps running" in out, out
    second = pretrain(run, digits_shards, site)
    out2 = finish(second)
    assert second.returncode == 0, out2
    assert f"re-attaching to Slurm job {jid}" in out2, out2
    assert job_id(run) == jid and len(sacct(jid)) == 1  # one job, not two
    return run


def test_two_nodes_train_one_model_with_synchronised_gradients(reference):
    done = json.loads((reference / "done.json").read_text())
    assert done["world_size"] == 2 and done["global_step"] == EPOCHS * 10
    hosts = {r["host"] for r in done["ranks"]}
    assert hosts == {"n1", "n2"}, done["ranks"]  # one rank per node
    prints = {r["fingerprint"] for r in done["ranks"]}
    assert len(prints) == 1, done["ranks"]  # bit-identical student + teacher on both nodes after 120 steps
    jid = job_id(reference)
    assert sacct(jid) == [(jid, "COMPLETED", "n[1-2]")]
    # it really trained: the teacher moved away from its initialisation, the loss went down
    log = [json.loads(ln) for ln in (reference / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-1] == EPOCHS * 10 and log[-1]["loss"] < log[0]["loss"]


@pytest.mark.parametrize("arch", ["vil_test", "cvt_test"])
def test_other_backbone_families_train_across_two_nodes(site, digits_shards, tmp_path, arch):
    """The launcher is the same for every family: ViL (sliding-chunk attention) and CvT (BatchNorm, per-node
    statistics on CPU) train on both nodes and end with bit-identical weights."""
    run = tmp_path / arch
    proc = pretrain(
        run, digits_shards, site, f"model.arch={arch}", "crops.global_size=64", "crops.local_size=[32]", epochs=1
    )
    out = finish(proc)
    assert proc.returncode == 0, out
    done = json.loads((run / "done.json").read_text())
    assert done["arch"] == arch and done["world_size"] == 2 and done["global_step"] == 10
    assert {r["host"] for r in done["ranks"]} == {"n1", "n2"}
    assert len({r["fingerprint"] for r in done["ranks"]}) == 1


def interrupted_run(run: Path, shards: Path, site: Path, *interrupt: str) -> tuple[subprocess.Popen, str, str]:
    """A run that ``interrupt`` (a command taking the job id last) hits after 10 steps; Slurm requeues it.
    Returns the launcher process, its output and the job id."""
    proc = pretrain(run, shards, site)
    jid = job_id(run)
    wait_for(lambda: logged_steps(run) >= 5, "10 steps")
    subprocess.run([*interrupt, jid], check=True, capture_output=True)
    release_when_pending(jid)
    return proc, finish(proc), jid


def test_scontrol_requeue_mid_run_resumes_to_the_same_weights(reference, site, digits_shards, tmp_path):
    run = tmp_path / "requeued"
    proc, out, jid = interrupted_run(run, digits_shards, site, "scontrol", "requeue")
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM after checkpointing" in out and "restart 1" in out, out
    resumed = [ln for ln in out.splitlines() if "resumed from" in ln]
    assert resumed, out
    step = int(resumed[0].rsplit("step", 1)[1])
    assert 0 < step < EPOCHS * 10  # it stopped in the middle, not at the end
    assert [r[1] for r in sacct(jid)] == ["REQUEUED", "COMPLETED"]
    assert_same_weights(run, reference)


def test_time_limit_signal_checkpoints_and_requeues_itself(reference, site, digits_shards, tmp_path):
    """USR2 (what Slurm sends signal_delay_s before the time limit): the job saves, requeues itself, resumes."""
    run = tmp_path / "timeout"
    proc, out, jid = interrupted_run(run, digits_shards, site, "scancel", "--signal=USR2")
    assert proc.returncode == 0, out
    assert f"requeueing job {jid} (1/" in out and "restart 1" in out, out
    assert_same_weights(run, reference)


def test_no_requeues_left_fails_with_the_jobs_own_error(site, digits_shards, tmp_path):
    run = tmp_path / "limit"
    proc = pretrain(run, digits_shards, site, "launch.max_requeues=0")
    jid = job_id(run)
    wait_for(lambda: logged_steps(run) >= 3, "6 steps")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True, capture_output=True)
    out = finish(proc)
    assert proc.returncode != 0
    assert f"Slurm job {jid} ended FAILED: esvit.errors.LaunchError: time limit reached after 0 requeues" in out, out
    assert (run / "checkpoint.pth").exists() and not (run / "final.pth").exists()  # the checkpoint is kept


def test_a_nan_loss_on_one_node_stops_both_with_the_real_message(site, digits_shards, tmp_path):
    """Rank 1 (on the other node) gets a NaN loss at its third step: both ranks stop at that step together and
    the job fails with that message, not with a collective timeout after minutes of waiting."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_RANK_1)
    env = env_with_python()
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), env.get("PYTHONPATH", "")])  # sbatch exports it
    run = tmp_path / "nan"
    cmd = [
        sys.executable,
        "-m",
        "esvit",
        "pretrain",
        "--launcher",
        "slurm",
        "--site",
        str(site),
        "--shards",
        str(digits_shards),
        "--out",
        str(run),
        *TINY,
        "optim.epochs=2",
        "run.checkpoint_every_steps=1",
        "run.dist_timeout_min=3",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "loss is nan on rank 1 of 2 at epoch 0, step 2" in out, out[-3000:]
    assert "timeout" not in out.lower() and "timed out" not in out.lower()
    assert sacct(job_id(run))[0][1] == "FAILED"
    assert load_checkpoint(run / "checkpoint.pth")["global_step"] == 2


def test_interrupting_the_launcher_cancels_its_job(site, digits_shards, tmp_path):
    run = tmp_path / "cancelled"
    proc = pretrain(run, digits_shards, site)
    jid = job_id(run)
    wait_for(lambda: state(jid) == "RUNNING", f"job {jid} running")
    proc.send_signal(signal.SIGINT)
    out = finish(proc)
    assert proc.returncode != 0 and f"cancelled Slurm job {jid}" in out, out
    wait_for(lambda: sacct(jid) and sacct(jid)[-1][1].startswith("CANCELLED"), f"job {jid} cancelled in sacct", 60)


def test_snakemake_slurm_profile_runs_the_demo_config_as_sbatch_jobs(site, tmp_path):
    """`snakemake --profile cluster_profiles/slurm` on the demo config (trimmed to one evaluation set and a
    short pretraining): sharding and evaluation are sbatch jobs, pretraining a 2-node submitit job."""
    cfg = yaml.safe_load((REPO / "configs/config.yaml").read_text())
    cfg["datasets"].pop("fashion_mnist")  # 60,000 images: the Slurm mechanics do not need them
    run = cfg["runs"]["esvit_demo"]
    cfg["runs"] = {"esvit_demo": run}  # the ablation's other runs: the same mechanics again
    run.update(
        config=str(REPO / run["config"]),
        dataset="mnist5k",
        mix=["digits"],
        overrides=[
            "optim.epochs=1",
            "data.samples_per_epoch=128",
            "optim.batch_size_per_device=16",
            "data.num_workers=0",
            "run.threads=1",
        ],
    )
    cfg["eval"].update(
        datasets=["mnist5k"], linear_datasets=[], random_init_baseline=False, workers=0, correspondence_dataset=None
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/knn/esvit_demo/mnist5k/metrics.json", "results/probe/esvit_demo/mnist5k/metrics.json"]
    # this cluster's size: 2 CPUs and 8 GB per node, no GPU (what a site sets in the profile and submitit.yaml)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--profile",
        str(REPO / "cluster_profiles/slurm"),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--config",
        "launcher=slurm",
        f"launch_site={site}",
        "--default-resources",
        "mem_mb=2000",
        "runtime=30",
        f"slurm_partition={PARTITION}",
        "--set-resources",
        "extract_features:gpu=0",
        "extract_features:mem_mb=4000",
        "--set-threads",
        "write_shards=1",
        "extract_features=1",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "3",
        "--max-status-checks-per-second",
        "10",
        *targets,
    ]
    snake = subprocess.Popen(
        cmd, cwd=tmp_path, env=env_with_python(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # `esvit status` while it runs, as from the login node: the pretraining run is seen on its Slurm job
    seen = []
    while snake.poll() is None and len(seen) < 600:
        st = subprocess.run(
            [sys.executable, "-m", "esvit", "status", "--config", "config.yaml", "--json"],
            cwd=tmp_path,
            env=env_with_python(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert st.returncode == 0, st.stderr
        row = json.loads(st.stdout.splitlines()[0])
        if row["state"] == "running" and not any(s[0] == "running" for s in seen):  # the table a user sees then
            print(
                subprocess.run(
                    [sys.executable, "-m", "esvit", "status", "--config", "config.yaml"],
                    cwd=tmp_path,
                    env=env_with_python(),
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            )
        seen.append((row["state"], row["where"], row["step"]))
        time.sleep(0.5)
    out, _ = snake.communicate(timeout=1200)
    proc = subprocess.CompletedProcess(cmd, snake.returncode, out, "")
    assert proc.returncode == 0, out[-6000:]
    jobs = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(jobs) == 7, out[-6000:]  # 3 shard + 2 extract + knn + probe
    for jid in jobs:
        assert [r[1] for r in sacct(jid)] == ["COMPLETED"], (jid, sacct(jid))
    pre = json.loads((tmp_path / "results/pretrain/esvit_demo/slurm/job.json").read_text())["job_id"]
    assert sacct(pre) == [(pre, "COMPLETED", "n[1-2]")]
    running = [s for s in seen if s[0] == "running"]
    # seen through Slurm (the job RUNNING) or, once rank 0 holds the run folder's lock, as its pid in that job
    assert running and all(
        w == f"Slurm job {pre} (RUNNING)" or w.endswith(f", Slurm job {pre}") for _, w, _ in running
    ), seen
    assert seen[0][0] == "not started", seen
    final = subprocess.run(
        [sys.executable, "-m", "esvit", "status", "--config", "config.yaml"],
        cwd=tmp_path,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(final.stdout)  # the status table after the run, in the test log
    assert re.search(rf"esvit_demo +done +Slurm job {pre} ", final.stdout) and " 2/2 " in final.stdout, final.stdout
    log = (tmp_path / "results/logs/pretrain/esvit_demo.log").read_text()
    assert f"submitted Slurm job {pre}" in log and "[job] esvit job: rank 0/2 on n1" in log, log
    for t in targets:
        assert json.loads((tmp_path / t).read_text())["metrics"]


def test_ctrl_c_on_snakemake_cancels_the_pretraining_job(site, tmp_path):
    """Ctrl-C reaches Snakemake's whole process group; the launcher in it cancels the job (no orphan)."""
    cfg = yaml.safe_load((REPO / "configs/config.yaml").read_text())
    cfg["datasets"] = {"digits": {"source": "digits", "splits": ["train"]}}
    cfg["runs"] = {
        "long": {
            "config": str(REPO / "configs/pretrain/demo.yaml"),
            "dataset": "digits",
            "overrides": ["optim.epochs=100", "optim.batch_size_per_device=16", "data.num_workers=0"],
        }
    }
    cfg["eval"] = {"datasets": [], "linear_datasets": []}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--config",
        "launcher=slurm",
        f"launch_site={site}",
        "--cores",
        "2",
        "results/pretrain/long/final.pth",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env_with_python(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = tmp_path / "results/pretrain/long"
    jid = job_id(run, timeout=300)
    wait_for(lambda: state(jid) == "RUNNING", f"job {jid} running")
    os.killpg(proc.pid, signal.SIGINT)
    out = finish(proc, timeout=120)
    assert proc.returncode != 0, out
    wait_for(lambda: sacct(jid) and sacct(jid)[-1][1].startswith("CANCELLED"), f"job {jid} cancelled in sacct", 60)
    log = (tmp_path / "results/logs/pretrain/long.log").read_text()
    assert f"interrupted: cancelled Slurm job {jid}" in log, log
