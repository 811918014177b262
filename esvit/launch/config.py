"""Where a pretraining run's processes run: the ``launch`` section of a training config.

Site facts (partition, account, QoS) belong in the site file (``cluster_profiles/slurm/submitit.yaml``, read by
``esvit pretrain --site``), not in ``configs/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from esvit.fields import option

__all__ = ["LaunchConfig"]


@dataclasses.dataclass
class LaunchConfig:
    """Where the run's processes run. Site facts (partition, account, QoS) belong in the site file
    (cluster_profiles/slurm/submitit.yaml, `esvit pretrain --site`), not in configs/."""

    launcher: Literal["local", "slurm"] = option(
        "local", help="local: this process (or torchrun's); slurm: a submitit job of nodes x tasks_per_node tasks."
    )
    nodes: int = option(1, gt=0, help="Slurm nodes.")
    gpus_per_node: int = option(0, min=0, help="GPUs per node, one task each (0: CPU tasks, gloo).")
    tasks_per_node: int | None = option(
        None, gt=0, help="Tasks per node (default: gpus_per_node, or 1 on CPU); must equal gpus_per_node on GPUs."
    )
    cpus_per_task: int = option(
        10, gt=0, help="CPU cores per task (data-loader workers + 1; the paper's code uses 10 workers)."
    )
    mem_gb: float | None = option(None, gt=0, help="Memory per node in GB (default: the partition's default).")
    timeout_min: int = option(
        1440, gt=0, help="Time limit of one allocation; the job checkpoints and requeues itself before it."
    )
    partition: str | None = option(None, help="Slurm partition (default: the cluster's default partition).")
    account: str | None = option(None, help="Slurm account to charge.")
    qos: str | None = option(None, help="Slurm quality of service.")
    constraint: str | None = option(None, help="Slurm node constraint (features), e.g. a100|h100.")
    signal_delay_s: int = option(
        120, min=10, help="Slurm sends USR2 this long before the time limit: time to finish a step and checkpoint."
    )
    max_requeues: int = option(
        10, min=0, help="Requeues after time limits / USR2 preemption before the job gives up (then rerun resumes)."
    )
    sbatch: dict[str, Any] = option(
        {}, help="Extra sbatch options, e.g. {exclusive: true, mail-type: END, reservation: x}."
    )
    setup: list[str] = option(
        [], help="Shell lines run in the job before the tasks start (module load, environment activation)."
    )
    job_name: str | None = option(None, help="Slurm job name (default: esvit-<run folder name>).")
    poll_s: float = option(15.0, gt=0, help="Seconds between job-state checks while following the job.")
    cancel_on_interrupt: bool = option(
        True,
        help="Interrupting `esvit pretrain` (or Snakemake) cancels the job; false leaves it running (a rerun "
        "re-attaches).",
    )

    def tasks(self) -> int:
        """Tasks per node: one per GPU, else ``tasks_per_node`` (default 1)."""
        return self.tasks_per_node or self.gpus_per_node or 1
