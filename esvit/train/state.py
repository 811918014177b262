"""Checkpoints: one file with everything a bitwise-exact resume needs, written atomically, loaded safely.

Contents: student, teacher, both loss centres (the loss module's buffers), optimizer, grad scaler, epoch and
the step inside it, global step, RNG states (Python, NumPy, torch CPU and CUDA), the resolved config, and the
tool version. Only tensors and plain containers are stored, so ``torch.load(weights_only=True)`` reads it and
a pickle with code in it is refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esvit import __version__
from esvit.atomic import atomic_path
from esvit.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "CheckpointError"]




def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
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
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.current_device() < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the tool version) to ``path`` atomically (temp file + fsync + rename)."""
    state = {**state, "esvit_version": __version__}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; one clear error for a missing, corrupt or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe globals, RuntimeError/EOFError for torn files
        lines = [ln for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        msg = (lines[0] if lines else str(exc).splitlines()[0]).strip()[:300]
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r} safely ({type(exc).__name__}: {msg}). It is truncated, "
            "corrupt, or holds Python objects beyond tensors and plain containers; re-export it with tensors only"
        ) from None
