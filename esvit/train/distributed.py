"""torch.distributed set-up from the environment (env:// rendezvous: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT — what torchrun and submitit's TorchDistributedEnvironment export)."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "close_distributed", "gather_objects", "init_distributed", "rank_fingerprints"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_min: float = 30) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU); a single process otherwise.

    ``timeout_min``: how long a collective waits for the other ranks before it fails with a timeout error (so a
    rank that died or hangs ends the job instead of stalling it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, init_method="env://", world_size=world, rank=rank, timeout=timedelta(minutes=timeout_min)
        )
    return DistInfo(rank, world, local)


def close_distributed() -> None:
    """Leave the process group, if one was joined (the end of a run, or its failure)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_batch_norm_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm running statistics (a collective). Without SyncBatchNorm (CPU ranks)
    each rank estimates them from its own batches (DDP broadcasts the student's before each forward only); the
    checkpoint holds rank 0's, and so do all ranks after this."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for t in m.buffers():
                dist.broadcast(t, src=0)


def rank_fingerprints(*modules: torch.nn.Module) -> list[dict]:
    """Every rank's ``{rank, host, fingerprint}`` (SHA-256 of the modules' parameters and buffers), gathered.

    Equal fingerprints mean the ranks hold bit-identical weights. ``host`` is Slurm's node name when there is
    one. A collective: every rank must call it.
    """
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    me = {
        "rank": dist.get_rank() if dist.is_initialized() else 0,
        "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "fingerprint": h.hexdigest()[:16],
    }
    return gather_objects(me)


def gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
