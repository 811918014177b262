"""Checkpoint files: written atomically, loaded safely.

Only tensors and plain containers are stored, so ``torch.load(weights_only=True)`` reads a file and a pickle
with code in it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from esvit import __version__
from esvit.atomic import atomic_path
from esvit.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]


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
        if "argparse.Namespace" in msg or "numpy" in msg:  # what main_esvit.py's checkpoints hold beyond tensors
            raise CheckpointError(
                f"{str(path)!r} looks like an official EsViT checkpoint (main_esvit.py's layout: its args and "
                "numpy scalars); convert it first: esvit import --official FILE --arch ARCH --out OUT"
            ) from None
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r} safely ({type(exc).__name__}: {msg}). It is truncated, "
            "corrupt, or holds Python objects beyond tensors and plain containers; re-export it with tensors only"
        ) from None
