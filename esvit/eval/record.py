"""The metrics record: what ``esvit knn``, ``esvit probe`` and ``esvit linear`` write, and what the report reads.

One JSON object per evaluation, ``results/{knn,probe,linear}/<model>/<dataset>/metrics.json`` in the workflow;
its fields are listed in docs/design.md §3.4. :class:`MetricsRecord` is the one definition of that contract:
:meth:`MetricsRecord.write` writes it (atomically) and :func:`read_record` reads it back, refusing a file that
is not such a record with a :class:`RecordError` that names the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esvit.atomic import atomic_write_json
from esvit.errors import ReportError

__all__ = ["MetricsRecord", "RecordError", "read_record", "REQUIRED_KEYS"]


class RecordError(ReportError):
    """A metrics record that cannot be read (missing, not JSON, or without a required key).

    Attributes:
        path: the file; reason: what is wrong with it (the message is ``"<path>: <reason>"``).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass
class MetricsRecord:
    """One evaluation's result (the JSON keys, in the order they are written)."""

    run: str  # the evaluated model: a run, a release, or {run}_random
    arch: str | None
    dataset: str
    eval: str  # knn, probe, linear_fast or linear_paper
    metric_name: str  # top1 (k-NN, linear) or the dataset's metric (probe)
    value: float  # the headline score, in percent
    metrics: dict[str, Any]  # every score (top1_k10 ... for k-NN; top1, best_top1, best_epoch, history for linear)
    n_train: int
    n_test: int
    hparams: dict[str, Any]  # the hyper-parameters chosen
    checkpoint: str | None
    checkpoint_sha256: str | None
    wall_s: float
    device: str | None = field(default=None)  # where it ran (absent from hand-written records)

    @property
    def family(self) -> str:
        """The evaluation's family, the results folder it belongs in: ``knn``, ``probe`` or ``linear``."""
        return self.eval.split("_", 1)[0]

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys in the contract's order."""
        return dataclasses.asdict(self)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record to ``path`` atomically (a killed process leaves the old file or the new one)."""
        atomic_write_json(path, self.to_json())
        return Path(path)


REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(MetricsRecord) if f.default is dataclasses.MISSING)
_NUMBERS = ("value", "n_train", "n_test", "wall_s")
_OBJECTS = ("metrics", "hparams")


def read_record(path: str | os.PathLike) -> MetricsRecord:
    """Read a metrics record written by :meth:`MetricsRecord.write` (unknown keys are ignored).

    Raises:
        RecordError: the file cannot be read, is not a JSON object, lacks a required key, or holds a number or
            an object of the wrong type; the message names the file.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RecordError(path, str(exc)) from None
    if not isinstance(data, dict):
        raise RecordError(path, "not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise RecordError(
            path, f"not a metrics record: no {keys}; rerun the evaluation that writes it (esvit knn, probe or linear)"
        )
    for key in _NUMBERS:
        if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
            raise RecordError(path, f"{key!r} is {data[key]!r}, not a number; rerun the evaluation that writes it")
    for key in _OBJECTS:
        if not isinstance(data[key], dict):
            raise RecordError(path, f"{key!r} is {data[key]!r}, not a JSON object; rerun the evaluation that writes it")
    return MetricsRecord(**{f.name: data[f.name] for f in dataclasses.fields(MetricsRecord) if f.name in data})
