"""Per-iteration schedules (docs/algorithm.md §1.5; DINO's ``cosine_scheduler``)."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule"]


def cosine_schedule(
    base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0, start_warmup: float = 0.0
) -> np.ndarray:
    """``epochs * iters_per_epoch`` values: a linear warm-up from ``start_warmup`` to ``base`` over
    ``warmup_epochs`` (both ends included), then ``final + (base - final) / 2 * (1 + cos(pi * i / n))`` for
    i = 0..n-1 over the remaining n iterations."""
    warmup_iters = warmup_epochs * iters_per_epoch
    warmup = np.linspace(start_warmup, base, warmup_iters) if warmup_iters > 0 else np.array([])
    n = epochs * iters_per_epoch - warmup_iters
    i = np.arange(n)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(n, 1)))
    out = np.concatenate((warmup, cosine))
    assert len(out) == epochs * iters_per_epoch
    return out
