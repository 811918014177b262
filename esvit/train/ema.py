"""Teacher update: an exponential moving average of the student, heads included (docs/algorithm.md §1.1)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = m * teacher + (1 - m) * student``, parameter by parameter (both in the same order)."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters, student {len(s)}: not the same architecture")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
