"""Launch: distributed set-up (and, with the Slurm issue, submitit jobs)."""

from esvit.launch.distributed import DistInfo, init_distributed, is_main

__all__ = ["DistInfo", "init_distributed", "is_main"]
