"""Checkpoint interop: import official EsViT checkpoints, export backbones that timm loads unchanged.

Official EsViT checkpoints are what ``main_esvit.py`` saves: ``{student, teacher, optimizer, epoch, args,
dino_loss, fp16_scaler}``, with ``args`` the ``argparse.Namespace`` of the run and numpy scalars in the
optimizer's learning rates. Loading them unpickles nothing beyond tensors, plain containers and a short
allow-list of data types (:data:`OFFICIAL_SAFE_GLOBALS`); anything else is refused.

Key layout (``docs/checkpoints.md``): the Swin teacher's keys have no prefix, its student's carry DDP's
``module.``; the DINO heads are ``head.*`` and ``head_dense.*``; ResNet and DeiT backbones sit under
``backbone.`` (and ``module.``). Swin's PatchMerging sits at the *end* of each stage (timm puts it at the start
of the next one). Importing takes the teacher, drops the heads, and applies timm's own ``checkpoint_filter_fn``
(downsample renumbering, removal of the non-persistent ``relative_position_index`` / ``attn_mask`` buffers),
then loads strictly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esvit.atomic import atomic_path, atomic_write_json
from esvit.checkpoint_file import CheckpointError, load_checkpoint, save_checkpoint
from esvit.errors import ConfigError
from esvit.fields import did_you_mean
from esvit.imported import import_record_path
from esvit.models.backbones import ARCHS, Backbone

__all__ = [
    "filter_state_dict",
    "import_official",
    "load_timm_weights",
    "export_backbone",
    "backbone_state",
    "load_official_checkpoint",
    "is_official",
    "official_to_esvit",
    "OFFICIAL_SAFE_GLOBALS",
]

_PREFIXES = ("module.", "backbone.")
_HEADS = ("head.", "head_dense.")


def _numpy_globals() -> list:
    """The numpy types a pickled optimizer state holds (its lr / weight decay are numpy float64 scalars), under
    the names numpy 1 (the released checkpoints) and numpy 2 write them."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")]
    return [np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


# Beyond tensors and containers, the only types an official checkpoint may hold: data, no code runs.
OFFICIAL_SAFE_GLOBALS: list = [argparse.Namespace, *_numpy_globals()]


def load_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as ``main_esvit.py`` saves it (or one of this project's), unpickling nothing beyond
    tensors, containers and :data:`OFFICIAL_SAFE_GLOBALS`; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(OFFICIAL_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a type outside the allow-list, RuntimeError for a torn file
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        msg = (lines[0] if lines else str(exc).splitlines()[0] if str(exc) else "").split(" was not an allowed")[0]
        raise CheckpointError(
            f"cannot load {str(path)!r} safely ({type(exc).__name__}: {msg[:200]}); an official EsViT checkpoint holds "
            "only tensors, containers, argparse.Namespace and numpy scalars: is the file complete and from "
            "microsoft/esvit?"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def is_official(ckpt: dict) -> bool:
    """An official EsViT training checkpoint (``main_esvit.py`` layout), not one of this project's."""
    return "config" not in ckpt and "teacher" in ckpt and ("args" in ckpt or "dino_loss" in ckpt)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


# family -> the name messages use, and key fragments only that family's official / timm state dicts have
FAMILY_NAMES = {"swin": "Swin", "vil": "ViL", "cvt": "CvT", "pvt": "PvT", "vit": "ViT / DeiT", "resnet": "ResNet"}
_FAMILY_KEYS = {
    "vil": (
        ".attn.query.weight",
        "layer1.0.norm_embed.",
        ".attn.local_relative_position_bias_table",
        "stages.0.embed.cls_token",
    ),
    "cvt": (".fn.qkv.dw.weight", ".attn.qkv.dw.weight"),
    "pvt": ("pos_embed1", "block1.0.attn.sr", "patch_embed1.proj."),
    "swin": (".attn.relative_position_bias_table", ".downsample.reduction.weight"),
    "vit": ("blocks.0.attn.qkv.weight",),
    "resnet": ("layer1.0.conv1.weight",),
}


def guess_family(state: dict[str, torch.Tensor]) -> str | None:
    """The model family a backbone state dict (official or this project's layout, prefixes allowed) belongs to,
    from key fragments only that family has; None when no family's keys are found."""
    keys = [_strip(k) for k in state]
    for family, marks in _FAMILY_KEYS.items():  # ViL / CvT / PvT first: their keys are the most specific
        if any(mark in k for k in keys for mark in marks):
            return family
    return None


def filter_state_dict(state: dict[str, torch.Tensor], backbone: Backbone) -> dict[str, torch.Tensor]:
    """An official (or DINO-style) backbone state dict -> the timm model's keys.

    Args:
        state: the ``teacher`` (or ``student``) dict of an official checkpoint, or a plain backbone dict.
        backbone: the target, whose family's ``filter_state_dict`` does the conversion.
    """
    out = {}
    for k, v in state.items():
        k = _strip(k)
        if k.startswith((*_HEADS, "fc.")):  # DINO heads, classifier
            continue
        out[k] = v
    _check_window_tables(out, backbone)  # relative-position tables: Swin only, none elsewhere
    return backbone.features.filter_state_dict(out, backbone.net)


def _check_window_tables(state: dict[str, torch.Tensor], backbone: Backbone) -> None:
    """timm's filter silently *resizes* relative-position tables of another window size: refuse instead (a W14
    checkpoint in a W7 model is another network, not a conversion)."""
    own = backbone.net.state_dict()
    for k, v in state.items():
        if k.endswith("relative_position_bias_table") and k in own and own[k].shape != v.shape:
            what = "another window size" if own[k].shape[0] != v.shape[0] else "another width (attention heads)"
            raise CheckpointError(
                f"{k} has shape {tuple(v.shape)} but {backbone.arch} expects {tuple(own[k].shape)}: the checkpoint has "
                f"{what}; check --arch (e.g. _w7 vs _w14, tiny / small / base)"
            )


def official_to_esvit(state: dict[str, torch.Tensor], backbone: Backbone) -> dict[str, torch.Tensor]:
    """An official ``student`` / ``teacher`` state dict -> this project's ``EsViTNet`` keys: the backbone under
    ``backbone.net.`` in timm's layout, the heads ``head.*`` / ``head_dense.*`` as they are (same names)."""
    heads = {}
    for k, v in state.items():
        k = _strip(k)
        if k.startswith(_HEADS):
            heads[k] = v
    return {**{f"backbone.net.{k}": v for k, v in filter_state_dict(state, backbone).items()}, **heads}


def _plain(value: Any) -> Any:
    """``args`` of an official checkpoint as plain data (for the imported file's record)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch appends advice that does not apply here)."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def load_timm_weights(path: str | Path) -> dict[str, Any]:
    """A timm / torchvision-style state dict: a ``.safetensors`` file (timm's hub format; no pickle at all) or a
    ``.pth`` / ``.bin`` of tensors (``weights_only``), possibly under ``model`` or ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):  # u64 header size, then JSON
            from safetensors.torch import load_file

            return load_file(str(path))
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load {str(path)!r} as timm weights ({type(exc).__name__}: {_first_line(exc)}); is the file "
            "complete?"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a state dict")
    return ckpt


def import_official(path: str | Path, arch: str, out: str | Path, key: str = "teacher", fmt: str = "official") -> Path:
    """Convert an official EsViT checkpoint (``fmt="official"``) or timm weights (``fmt="timm"``, e.g. the
    supervised Swin-T reference: its classifier is dropped) into this project's format (for ``esvit extract``).

    Returns:
        ``out``, holding ``{key: {"backbone.net.*": ...}, "config": {"model": {"arch"}, "crops": ...}}`` and the
        official run's ``args`` as plain data.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}.{did_you_mean(arch, ARCHS)}")
    if fmt not in ("official", "timm"):
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: official, timm")
    from esvit.download import check_recorded

    check_recorded(path)  # a downloaded file: still the file its first download recorded
    ckpt = load_official_checkpoint(path) if fmt == "official" else load_timm_weights(path)
    if "config" in ckpt and "esvit_version" in ckpt:
        raise CheckpointError(
            f"{path}: already one of this project's checkpoints; give it to `esvit extract --checkpoint` as it is"
        )
    if fmt == "official" and key not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path}: a plain backbone state dict, not an official EsViT checkpoint (no {key!r}, no args: nothing "
            "says how it was trained); import it with --format timm"
        )
    if fmt == "official" and key not in ckpt and any(k.startswith("layers.") or k.startswith("model") for k in ckpt):
        raise CheckpointError(
            f"{path}: a plain backbone state dict, not an official EsViT checkpoint (no {key!r}); "
            "import it with --format timm"
        )
    state = ckpt.get(key, ckpt) if fmt == "official" else ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no {key!r} state dict inside (keys: {sorted(map(str, ckpt))[:8]})")
    backbone = Backbone(arch)
    found = guess_family(state)
    if found is not None and found != backbone.family:
        names = ", ".join(a for a, spec in ARCHS.items() if spec.family == found)
        raise CheckpointError(
            f"{path}: holds a {FAMILY_NAMES[found]} network (its keys), not {arch} ({FAMILY_NAMES[backbone.family]}); "
            f"check --arch ({names})"
        )
    try:
        converted = filter_state_dict(state, backbone)
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:  # a family filter meeting foreign keys
        raise CheckpointError(
            f"{path}: does not fit {arch} ({type(exc).__name__}: {_first_line(exc)}); check --arch"
        ) from None
    try:
        missing, unexpected = backbone.net.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # size mismatches
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
        raise CheckpointError(f"{path}: does not fit {arch} ({detail}); check --arch (width, window size)") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit {arch} (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); check --arch (window size, width)"
        )
    record = {
        key: {f"backbone.net.{k}": v for k, v in backbone.net.state_dict().items()},
        "config": {"model": {"arch": arch}, "crops": {"global_size": 224}},
        "imported_from": str(path),
        "imported_format": fmt,
    }
    if "args" in ckpt:
        record["official_args"] = _plain(ckpt["args"])
    if isinstance(ckpt.get("epoch"), int):
        record["official_epoch"] = ckpt["epoch"]
    save_checkpoint(out, record)
    # what the report needs without loading the weights: the tasks the official run trained (its own args)
    dense = getattr(ckpt.get("args"), "use_dense_prediction", None)
    atomic_write_json(
        import_record_path(out),
        {
            "arch": arch,
            "format": fmt,
            "imported_from": str(path),
            "tasks": None if dense is None else ("V+R" if dense else "V"),
            "official_epoch": record.get("official_epoch"),
        },
    )
    return Path(out)


def backbone_state(ckpt: dict, key: str, path: str | Path) -> dict[str, torch.Tensor]:
    """The timm state dict of the ``key`` network's backbone in one of this project's checkpoints."""
    if key not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"{path}: not an esvit checkpoint (keys {sorted(ckpt)[:6]}); official EsViT checkpoints need "
            "`esvit import` first"
        )
    prefix = "backbone.net."
    state = {k[len(prefix) :]: v for k, v in ckpt[key].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: its {key!r} holds no backbone weights")
    return state


def export_backbone(checkpoint: str | Path, out: str | Path, key: str = "teacher") -> tuple[Path, str]:
    """Write the backbone of one of this project's checkpoints as a plain timm state dict.

    Returns:
        (``out``, the timm model name): ``timm.create_model(name, num_classes=0)`` loads it with strict=True.
    """
    ckpt = load_checkpoint(checkpoint)
    state = backbone_state(ckpt, key, checkpoint)
    with atomic_path(out) as tmp:  # a bare state dict: nothing but the timm model's keys
        torch.save(state, tmp)
    return Path(out), ARCHS[ckpt["config"]["model"]["arch"]].timm_name
