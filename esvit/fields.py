"""Typed config fields and their strict loading: the machinery under every config of the package.

A config is a tree of dataclasses whose fields are declared with :func:`option`; constraints live in the
field's metadata:

- ``min`` / ``max``: inclusive bounds; ``gt``: exclusive lower bound (``gt=0`` = "positive");
- ``nonempty``: a list or mapping with at least one entry;
- ``choices``: allowed values (a tuple), or a callable returning them (registries);
- ``path``: ``"exists"`` when the path must exist at load time (see :data:`CHECK_PATHS`);
- ``help``: the description (also the Snakemake schema's description).

:func:`from_dict` builds such a tree from YAML data strictly: an unknown key (with a did-you-mean), a wrong type or
a value out of bounds raises :class:`~esvit.errors.ConfigError` naming the key, the value and what is allowed.
This module imports nothing of the package but its errors: every config module builds on it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from esvit.errors import ConfigError

__all__ = [
    "NAME_RE",
    "CHECK_PATHS",
    "option",
    "did_you_mean",
    "from_dict",
    "to_dict",
    "load_yaml",
    "apply_overrides",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# False while a workflow is planned: paths that jobs will create or that only the jobs read (data roots,
# checkpoints still to be downloaded) are not required to exist yet (see esvit.config.load_config's check_paths).
CHECK_PATHS = contextvars.ContextVar("esvit_check_paths", default=True)


def option(default: Any = dataclasses.MISSING, *, factory: Any = None, help: str, **meta: Any) -> Any:
    """A dataclass field with a default (or ``factory``), its help text and its constraints (module docstring)."""
    meta["help"] = help
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key} must be {_type_name(tp)} (got {value!r})")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(map(repr, allowed))} (got "
                f"{value!r}).{did_you_mean(value, map(str, allowed))}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)} (got {type(value).__name__} {value!r})")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping (got {type(value).__name__} {value!r})")
        _, item = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if dataclasses.is_dataclass(item) and not (isinstance(k, str) and NAME_RE.match(k)):
                raise ConfigError(
                    f"{key}: name {k!r} must be lower-case letters, digits and '_' and start with a letter"
                )
            out[k] = _convert(v, item, f"{key}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number (got {type(value).__name__} {value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer (got {type(value).__name__} {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false (got {type(value).__name__} {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {type(value).__name__} {value!r})")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not in the config


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{key} must be > {meta['gt']} (got {value!r})")
    if "min" in meta and not value >= meta["min"]:
        raise ConfigError(f"{key} must be >= {meta['min']} (got {value!r})")
    if "max" in meta and not value <= meta["max"]:
        raise ConfigError(f"{key} must be <= {meta['max']} (got {value!r})")
    if meta.get("nonempty") and len(value) == 0:
        raise ConfigError(f"{key} must not be empty")
    if "choices" in meta and value is not None:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if value not in choices:
            raise ConfigError(
                f"{key}: unknown name {value!r}; known: {', '.join(choices)}.{did_you_mean(value, choices)}"
            )
    if meta.get("path") == "exists" and value is not None and CHECK_PATHS.get() and not Path(value).exists():
        raise ConfigError(f"{key}: path {value!r} does not exist; create it or point {key} at the right place")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass type from this module (or any dataclass whose fields use the same metadata).
        data: the mapping read from YAML (``None`` means all defaults).
        prefix: dotted key of ``data`` inside the whole config, for messages.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: naming the first bad key.
    """
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values (got {type(data).__name__} {data!r})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise ConfigError(f"{where}: unknown key {k!r}.{did_you_mean(k, fields)} Allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore
                raise ConfigError(f"{where}: missing required key {name!r} ({f.metadata.get('help', '')})")
            continue
        value = _convert(data[name], hints[name], key)
        _check_meta(value, f.metadata, key)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """The plain-YAML form of a config object (inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with a clear error for a missing file or a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top (got {type(data).__name__})")
    return data


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
