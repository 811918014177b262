"""Graceful stop on Slurm's signals: finish the step, checkpoint, then requeue (time limit) or exit (requeue,
preemption, cancel).

Slurm sends USR2 ``signal_delay_s`` before the time limit (submitit's ``--signal``) and SIGTERM when a job is
cancelled, preempted or requeued (``scontrol requeue``), SIGKILL ``KillWait`` seconds later. The handler only
sets a flag; the training loop polls :meth:`GracefulStop.requested` between steps, which all ranks answer
together, so every rank stops after the same step and rank 0's checkpoint is exact.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import torch
import torch.distributed as dist

__all__ = ["GracefulStop"]

log = logging.getLogger("esvit")


class GracefulStop:
    """Catch ``signals``; :meth:`requested` is True on every rank once any rank caught one."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM)):
        self.signals = signals
        self.caught: signal.Signals | None = None
        self._agreed = False

    def install(self) -> "GracefulStop":
        for s in self.signals:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.caught is None or _rank(sig) > _rank(self.caught):  # SIGTERM (cancel) outranks USR2 (time limit)
            self.caught = sig
            log.warning("caught %s: stopping after this step to checkpoint", sig.name)

    def requested(self) -> bool:
        """Whether to stop now; a collective when torch.distributed is initialised (call it on every rank).

        The ranks agree on the signal too: SIGTERM (cancel, requeue, preemption) outranks USR2 (time limit), so
        a job being cancelled never requeues itself.
        """
        if self._agreed:
            return True
        code = _rank(self.caught)
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            t = torch.tensor([code], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            code = int(t.item())
            if code and self.caught is None:
                self.caught = _CODES[min(code, len(_CODES) - 1)]
        self._agreed = code > 0
        return self._agreed


_CODES = (None, signal.SIGUSR2, signal.SIGTERM)  # agreement order: a higher code wins


def _rank(sig: signal.Signals | None) -> int:
    return _CODES.index(sig) if sig in _CODES else len(_CODES) - 1  # other signals act as SIGTERM
