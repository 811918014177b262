"""The package's data files, installed with it (a wheel carries them; nothing is read from a source checkout).

- ``datasets.yaml``: the registry of the 18 transfer datasets (layouts, splits, metrics, downloads);
- ``releases.yaml``: the released EsViT checkpoints (URLs, sha256, architectures);
- ``paper_results.csv``: the paper's numbers the report prints beside this project's;
- ``transfer_datasets.csv``: sizes and licences of the 18 transfer datasets.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["resource_path"]


def resource_path(name: str) -> Path:
    """The installed file ``name`` of this folder, as a path (the package is always installed as files)."""
    return Path(str(files(__name__).joinpath(name)))
