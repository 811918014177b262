"""Graceful stop on Slurm's signals: finish the step, checkpoint, then requeue (time limit) or exit (requeue,
preemption, cancel).

Slurm sends USR2 ``signal_delay_s`` before the time limit (submitit's ``--signal``) and SIGTERM when a job is
cancelled, preempted or requeued (``scontrol requeue``), SIGKILL ``KillWait`` seconds later. The handler only
sets a flag; the training step agrees on every rank's flag in the collective it makes anyway (see
``Trainer.step``), so every rank stops after the same step and rank 0's checkpoint is exact.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

__all__ = ["GracefulStop"]

log = logging.getLogger("esvit")


class GracefulStop:
    """Catch ``signals``; calling it gives this rank's stop request (a code), :meth:`agree` the ranks' verdict."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM)):
        self.signals = signals
        self.caught: signal.Signals | None = None

    def install(self) -> GracefulStop:
        for s in self.signals:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.caught is None or _rank(sig) > _rank(self.caught):  # SIGTERM (cancel) outranks USR2 (time limit)
            self.caught = sig
            log.warning("caught %s: stopping after this step to checkpoint", sig.name)

    def __call__(self) -> int:
        """This rank's stop request: 0 (none), 1 (USR2: time limit) or 2 (SIGTERM and others). Not a collective:
        the training step agrees on it with the other ranks and reports back through :meth:`agree`."""
        return _rank(self.caught) if self.caught is not None else 0

    def agree(self, code: int) -> None:
        """The code the ranks agreed on (the highest): a rank that caught nothing, or a weaker signal, takes it,
        so every rank stops the same way (a job being cancelled never requeues itself)."""
        if code > (self() or 0):
            self.caught = _CODES[min(code, len(_CODES) - 1)]


_CODES = (None, signal.SIGUSR2, signal.SIGTERM)  # agreement order: a higher code wins


def _rank(sig: signal.Signals | None) -> int:
    return _CODES.index(sig) if sig in _CODES else len(_CODES) - 1  # other signals act as SIGTERM
