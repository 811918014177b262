"""Pretraining as a Slurm job through submitit: check the site, submit (or re-attach), follow, requeue.

The client side (``esvit pretrain --launcher slurm``, which the Snakemake rule runs as a local rule):

1. :func:`preflight` — ``sbatch`` on PATH, the partition, account and QoS exist, the partition has the nodes
   and GPUs asked for. Nothing is submitted when one of them fails.
2. :func:`submit_or_reattach` — the job id lives in ``<run>/slurm/job.json``; a job of the run that is still
   queued or running is re-attached to instead of submitted twice.
3. :func:`follow` — streams rank 0's log into this process's stdout (the rule's log), waits for the end, and
   raises :class:`LaunchError` with the job's own error when it fails. Interrupting it cancels the job unless
   ``launch.cancel_on_interrupt`` is false (then a rerun re-attaches).

The job side is :class:`PretrainJob`, a checkpointable callable that holds only paths: every task joins
``torch.distributed`` from Slurm's environment and runs :func:`esvit.train.loop.train`, which resumes from
``<run>/checkpoint.pth``. On USR2 (time limit) the ranks finish the step, rank 0 checkpoints and requeues the
job (up to ``launch.max_requeues`` times); on SIGTERM (``scontrol requeue``, preemption, cancel) they
checkpoint and exit, and Slurm requeues or ends the job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import submitit

from esvit.atomic import atomic_write_json, atomic_write_text
from esvit.errors import LaunchError
from esvit.launch.config import LaunchConfig
from esvit.train.config import TrainConfig, dump_train_config, load_train_config, per_device_batch

__all__ = [
    "LaunchError",
    "PretrainJob",
    "preflight",
    "submit_or_reattach",
    "follow",
    "launch_slurm",
    "job_state",
    "job_error",
]

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
    "RESV_DEL_HOLD",
}
SETTLE_S = 20.0  # how long an end state must hold before the client believes it (requeues flicker through FAILED)


# --------------------------------------------------------------------------------------------- the job side


class PretrainJob(submitit.helpers.Checkpointable):
    """What every Slurm task runs: paths only (the state is on disk), so a requeued job simply resumes."""

    def __init__(self, config_path: str, run_dir: str, max_requeues: int):
        self.config_path, self.run_dir, self.max_requeues = config_path, run_dir, max_requeues

    def __call__(self) -> str:
        import logging

        from esvit.launch.signals import GracefulStop
        from esvit.train.loop import train

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("esvit").addHandler(handler)
        logging.getLogger("esvit").setLevel(logging.INFO)
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        os.environ["MASTER_ADDR"] = node_address(env.master_addr)
        stop = GracefulStop().install()  # replaces submitit's handlers: stop at a step boundary, all ranks together
        cfg = load_train_config(self.config_path)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        print(
            f"esvit job: rank {env.rank}/{env.world_size} on {os.environ.get('SLURMD_NODENAME', socket.gethostname())}"
            f", master {os.environ['MASTER_ADDR']}:{env.master_port}, restart {restarts}",
            flush=True,
        )
        final = train(cfg, self.run_dir, should_stop=stop, show_progress=env.rank == 0)
        if stop.caught is None:
            return str(final)
        # stopped by a signal: the checkpoint is written; requeue on a time limit, else let Slurm decide
        if stop.caught == signal.SIGUSR2 and env.rank == 0:
            if restarts >= self.max_requeues:
                raise LaunchError(
                    f"time limit reached after {restarts} requeues (launch.max_requeues={self.max_requeues}); the "
                    f"checkpoint in {self.run_dir} is kept: rerun to resume, or raise launch.timeout_min"
                )
            job_id = os.environ["SLURM_JOB_ID"]
            print(
                f"esvit job: checkpointed at {final}; requeueing job {job_id} ({restarts + 1}/{self.max_requeues})",
                flush=True,
            )
            subprocess.run(["scontrol", "requeue", job_id], check=True)
        print(f"esvit job: stopped by {stop.caught.name} after checkpointing", flush=True)
        raise SystemExit(0 if stop.caught == signal.SIGUSR2 else 143)  # no result file: the job is not over


def node_address(name: str) -> str:
    """An address for a Slurm node name: the name itself when it resolves, else the node's ``NodeAddr``."""
    try:
        socket.getaddrinfo(name, None)
        return name
    except socket.gaierror:
        pass
    out = _run(["scontrol", "show", "node", name, "-o"], check=False)
    m = re.search(r"\bNodeAddr=(\S+)", out)
    if not m:
        raise LaunchError(f"node {name!r} does not resolve and scontrol knows no NodeAddr for it")
    return m.group(1)


# ------------------------------------------------------------------------------------------ the client side


def _run(cmd: list[str], check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LaunchError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _gpus(gres: str) -> int:
    """GPUs per node in a ``sinfo %G`` field such as ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    n = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            n = max(n, int(m.group(1)))
    return n


def preflight(lc: LaunchConfig) -> str:
    """Check the site can run ``lc`` before anything is submitted.

    Returns:
        The partition the job goes to.

    Raises:
        LaunchError: naming what is missing or too small, and the setting to change.
    """
    site = "set it in cluster_profiles/slurm/submitit.yaml (or launch.<key>=... on the command line)"
    if not shutil.which("sbatch"):
        raise LaunchError(
            "launch.launcher is slurm but `sbatch` is not on PATH: run on a Slurm login node, or use --launcher local"
        )
    rows = [ln.split("|") for ln in _run(["sinfo", "-h", "-o", "%P|%D|%G|%c"]).splitlines() if ln.strip()]
    default = next((r[0].rstrip("*") for r in rows if r[0].endswith("*")), None)  # sinfo marks it with *
    rows = [[r[0].rstrip("*"), *r[1:]] for r in rows]
    names = sorted({r[0] for r in rows})
    partition = lc.partition or default
    if partition is None:
        raise LaunchError(
            f"launch.partition is not set and the cluster has no default partition ({', '.join(names)}); {site}"
        )
    if partition not in names:
        raise LaunchError(
            f"launch.partition {partition!r} is not a partition of this cluster (it has: "
            f"{', '.join(names) or 'none'}); {site}"
        )
    mine = [r for r in rows if r[0] == partition]
    nodes = sum(int(r[1]) for r in mine)
    if lc.nodes > nodes:
        raise LaunchError(
            f"launch.nodes={lc.nodes} but partition {partition!r} has {nodes} node(s); lower launch.nodes"
        )
    gpus = max(_gpus(r[2]) for r in mine)
    if lc.gpus_per_node > gpus:
        raise LaunchError(
            f"launch.gpus_per_node={lc.gpus_per_node} but partition {partition!r} has at most {gpus} "
            f"GPU(s) per node (sinfo gres: {', '.join(sorted({r[2] for r in mine}))}); lower it or "
            "pick a GPU partition"
        )
    cpus = max(int(r[3].rstrip("+")) for r in mine)
    if lc.cpus_per_task * lc.tasks() > cpus:
        raise LaunchError(
            f"launch.cpus_per_task={lc.cpus_per_task} x {lc.tasks()} task(s) per node needs "
            f"{lc.cpus_per_task * lc.tasks()} CPUs but nodes of {partition!r} have {cpus}; lower "
            "launch.cpus_per_task"
        )
    for key, value, fmt in (("account", lc.account, "an account"), ("qos", lc.qos, "a QoS")):
        if value is None:
            continue
        what = (
            ["show", "assoc", f"user={_user()}", "format=account"]
            if key == "account"
            else ["show", "qos", "format=name"]
        )
        proc = subprocess.run(["sacctmgr", "-n", "-P", *what], capture_output=True, text=True)
        if proc.returncode != 0:  # no accounting database to ask: let sbatch judge
            continue
        known = sorted({ln.strip() for ln in proc.stdout.splitlines() if ln.strip()})
        if value not in known:
            raise LaunchError(
                f"launch.{key} {value!r} is not {fmt} you can use here (sacctmgr lists: "
                f"{', '.join(known) or 'none'}); {site}"
            )
    return partition


def _user() -> str:
    import getpass

    return getpass.getuser()


def job_state(job_id: str) -> str:
    """Slurm's state of a job: squeue while it is known there, else sacct; "" when neither knows it (yet)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if proc.stdout.strip():
        return proc.stdout.strip().splitlines()[0].strip()
    if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
        return ""  # slurmctld did not answer (busy, restarting): unknown, not over
    out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], check=False).strip()
    return out.splitlines()[-1].split()[0] if out else ""


def executor_for(lc: LaunchConfig, folder: Path, partition: str, run_dir: Path) -> submitit.AutoExecutor:
    """A Slurm AutoExecutor with every setting of ``lc`` (nothing site-specific hard-coded)."""
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=lc.max_requeues)
    extra = dict(lc.sbatch)
    extra.setdefault("requeue", True)
    params = dict(
        nodes=lc.nodes,
        tasks_per_node=lc.tasks(),
        cpus_per_task=lc.cpus_per_task,
        timeout_min=lc.timeout_min,
        name=lc.job_name or f"esvit-{run_dir.name}",
        slurm_partition=partition,
        slurm_signal_delay_s=lc.signal_delay_s,
        slurm_additional_parameters=extra,
    )
    if lc.gpus_per_node:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.mem_gb:
        params["mem_gb"] = lc.mem_gb
    for key in ("account", "qos", "constraint"):
        if getattr(lc, key):
            params[f"slurm_{key}"] = getattr(lc, key)
    if lc.setup:
        params["slurm_setup"] = list(lc.setup)
    ex.update_parameters(**params)
    return ex


def submit_or_reattach(cfg: TrainConfig, run_dir: Path, out: TextIO = sys.stdout) -> str:
    """Submit the run's job, or return the id of its job that is still queued or running."""
    lc = cfg.launch
    folder = run_dir / "slurm"
    record = folder / "job.json"
    resolved = dump_train_config(cfg)
    if record.exists():
        old = json.loads(record.read_text())
        state = job_state(old["job_id"])
        if state in ACTIVE:
            print(f"pretrain: re-attaching to Slurm job {old['job_id']} ({state}) of {run_dir}", file=out, flush=True)
            config_now = folder / "train_config.yaml"
            if config_now.exists() and config_now.read_text() != resolved:
                print(
                    "pretrain: warning: the config changed since that job was submitted; it runs the old one "
                    f"(scancel {old['job_id']} and rerun to use the new one)",
                    file=out,
                    flush=True,
                )
            return old["job_id"]
        print(
            f"pretrain: earlier job {old['job_id']} is {state or 'gone'}; submitting a new one (it resumes from "
            "the run's checkpoint)",
            file=out,
            flush=True,
        )
    per_device_batch(
        cfg.optim, lc.nodes * lc.tasks()
    )  # a total batch this shape cannot split: refused before submitting
    partition = preflight(lc)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "train_config.yaml"
    atomic_write_text(config_path, resolved)
    job = executor_for(lc, folder, partition, run_dir).submit(
        PretrainJob(str(config_path.resolve()), str(run_dir.resolve()), lc.max_requeues)
    )
    atomic_write_json(
        record,
        {
            "job_id": job.job_id,
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "partition": partition,
            "nodes": lc.nodes,
            "tasks_per_node": lc.tasks(),
            "gpus_per_node": lc.gpus_per_node,
        },
    )
    print(
        f"pretrain: submitted Slurm job {job.job_id} ({lc.nodes} node(s) x {lc.tasks()} task(s), partition "
        f"{partition}); logs in {folder}",
        file=out,
        flush=True,
    )
    return job.job_id


class _Tail:
    """Print what a growing file gains, line by line, with a prefix."""

    def __init__(self, path: Path, prefix: str, out: TextIO):
        self.path, self.prefix, self.out, self.pos, self.rest = path, prefix, out, 0, ""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, errors="replace") as f:
            f.seek(self.pos)
            chunk = f.read()
            self.pos = f.tell()
        lines = (self.rest + chunk.replace("\r", "\n")).split("\n")
        self.rest = lines.pop()
        for ln in lines:
            if ln.strip():
                print(f"{self.prefix}{ln}", file=self.out, flush=True)


def follow(
    job_id: str,
    run_dir: Path,
    poll_s: float,
    cancel_on_interrupt: bool = True,
    out: TextIO = sys.stdout,
    settle_s: float = SETTLE_S,
) -> Path:
    """Wait for the job, streaming rank 0's stdout and stderr; return ``final.pth`` or raise the job's error.

    An end state counts once it has held for ``settle_s``: while a job requeues itself Slurm can report it
    FAILED for a moment (the killed tasks' exit) before it is PENDING again. SIGINT / SIGTERM (Ctrl-C, Snakemake
    stopping) cancel the job when ``cancel_on_interrupt``; otherwise the job keeps running and a rerun
    re-attaches to it.
    """
    folder = run_dir / "slurm"
    tails = [_Tail(folder / f"{job_id}_0_log.out", "[job] ", out), _Tail(folder / f"{job_id}_0_log.err", "[job] ", out)]

    def interrupted(signum, frame):
        if cancel_on_interrupt:
            subprocess.run(["scancel", job_id], capture_output=True)
            raise LaunchError(
                f"interrupted: cancelled Slurm job {job_id} (its last checkpoint in {run_dir} is kept; rerun to resume)"
            )
        raise LaunchError(
            f"interrupted: Slurm job {job_id} keeps running (launch.cancel_on_interrupt is false); rerun "
            "to re-attach, or scancel it"
        )

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        last, unknown_since, ended_since = None, None, None
        while True:
            st = job_state(job_id)
            for t in tails:
                t.poll()
            if st != last and st:
                print(f"pretrain: job {job_id} {st}", file=out, flush=True)
                last = st
            now = time.monotonic()
            if st in ACTIVE:
                unknown_since = ended_since = None
            elif st == "":  # between squeue and sacct; give it a minute
                unknown_since = unknown_since or now
                if now - unknown_since > 120:
                    raise LaunchError(f"Slurm no longer knows job {job_id} (neither squeue nor sacct); see {folder}")
            elif st == "COMPLETED" and (run_dir / "done.json").exists():
                break
            else:  # an end state: believe it once it has held for settle_s
                ended_since = ended_since or now
                if now - ended_since >= settle_s:
                    break
            time.sleep(min(poll_s, settle_s / 4) if ended_since else poll_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in tails:
        t.poll()
    final = run_dir / "final.pth"
    if st == "COMPLETED" and final.exists() and (run_dir / "done.json").exists():
        return final
    raise LaunchError(f"Slurm job {job_id} ended {st}: {job_error(folder, job_id)}")


def job_error(folder: Path, job_id: str) -> str:
    """The job's own error: the last line of rank 0's traceback (submitit's result file) or of its stderr."""
    from submitit.core.utils import pickle_load

    result = folder / f"{job_id}_0_result.pkl"
    if result.exists():
        outcome, value = pickle_load(result)
        if outcome == "error":
            lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
            return f"{lines[-1] if lines else value} (traceback in {folder / f'{job_id}_0_log.err'})"
    err = folder / f"{job_id}_0_log.err"
    if err.exists():
        lines = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
        tail = [ln for ln in lines if "error" in ln.lower()] or lines
        return f"{tail[-1] if tail else 'no message'} (log: {err})"
    return f"no log in {folder}"


def launch_slurm(cfg: TrainConfig, run_dir: str | Path, out: TextIO = sys.stdout) -> Path:
    """Submit (or re-attach to) the run's Slurm job and wait for ``final.pth``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job_id = submit_or_reattach(cfg, run_dir, out)
    return follow(job_id, run_dir, cfg.launch.poll_s, cfg.launch.cancel_on_interrupt, out)
