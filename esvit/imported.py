"""The small JSON record ``esvit import`` writes beside an imported checkpoint (``final.pth`` ->
``final.import.json``): its arch, format, source file and the tasks its official run trained (``V`` or ``V+R``,
read from that run's own arguments). The report reads it to compare a released checkpoint with the right row of
the paper without loading the weights. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["import_record_path", "read_import_record"]


def import_record_path(checkpoint: str | Path) -> Path:
    """``.../final.pth`` -> ``.../final.import.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".import.json")


def read_import_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The record beside ``checkpoint``, or None when there is none (not an imported checkpoint) or it is
    unreadable."""
    path = import_record_path(checkpoint)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
