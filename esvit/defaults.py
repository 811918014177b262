"""Defaults written once: a setting that both the workflow config and a CLI option (or a library function) have
takes its default from the config's dataclass field (esvit/config.py), so the rules and a command typed by hand
run with the same value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["field_default"]


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls``.

    Args:
        cls: a config dataclass, e.g. ``EvalConfig``.
        name: one of its fields with a default, e.g. ``"knn_temperature"``.

    Returns:
        The field's default (a fresh value of its default factory for lists and mappings).

    Raises:
        KeyError: ``cls`` has no field ``name``, or that field has no default.
    """
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")
