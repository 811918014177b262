"""The random-number state of a training process, as tensors and plain containers (for its checkpoint).

A training checkpoint holds everything a bitwise-exact resume needs: student, teacher, both loss centres (the
loss module's buffers), optimizer, grad scaler, epoch and the step inside it, global step, these RNG states
(Python, NumPy, torch CPU and CUDA), the resolved config and the tool version; :mod:`esvit.checkpoint_file`
writes and reads it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: a resume on another node shape (other GPU count per node) restores it too
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # older checkpoints held every visible GPU's state: take this process's
        cuda = (
            cuda[torch.cuda.current_device()]
            if torch.cuda.is_available() and torch.cuda.current_device() < len(cuda)
            else None
        )
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())
