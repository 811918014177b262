"""Checkpoint interop: import official EsViT checkpoints, export backbones that timm loads unchanged.

Official EsViT checkpoints (reference §2.1) hold ``student`` / ``teacher`` / ``optimizer`` / ``dino_loss`` ...;
the teacher's Swin keys have no prefix, the DINO heads live under ``head.*`` and ``head_dense.*``, and
PatchMerging sits at the *end* of each stage (timm puts it at the start of the next one). Importing takes the
teacher, drops the heads, and applies timm's own ``checkpoint_filter_fn`` (downsample renumbering, removal of
the non-persistent ``relative_position_index`` / ``attn_mask`` buffers), then loads strictly.
"""

from __future__ import annotations

from pathlib import Path
import torch

from esvit.atomic import atomic_path
from esvit.models.backbones import ARCHS, Backbone
from esvit.train.state import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["filter_state_dict", "import_official", "export_backbone", "backbone_state"]

_PREFIXES = ("module.", "backbone.")


def filter_state_dict(state: dict[str, torch.Tensor], backbone: Backbone) -> dict[str, torch.Tensor]:
    """An official (or DINO-style) backbone state dict -> the timm model's keys.

    Args:
        state: the ``teacher`` (or ``student``) dict of an official checkpoint, or a plain backbone dict.
        backbone: the target, whose family decides the conversion.
    """
    out = {}
    for k, v in state.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith(("head.", "head_dense.", "fc.")):  # DINO heads, classifier
            continue
        out[k] = v
    if backbone.family == "swin":
        from timm.models.swin_transformer import checkpoint_filter_fn

        out = checkpoint_filter_fn(out, backbone.net)
    return out


def import_official(path: str | Path, arch: str, out: str | Path, key: str = "teacher") -> Path:
    """Convert an official EsViT checkpoint into this project's format (usable by ``esvit extract``).

    Returns:
        ``out``, holding ``{key: {"backbone.net.*": ...}, "config": {"model": {"arch"}, "crops": ...}}``.
    """
    if arch not in ARCHS:
        raise CheckpointError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {str(path)!r} safely ({type(exc).__name__}); is it a checkpoint?") from None
    state = ckpt.get(key, ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no {key!r} state dict inside (keys: {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)})")
    backbone = Backbone(arch)
    converted = filter_state_dict(state, backbone)
    missing, unexpected = backbone.net.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit {arch} (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); check --arch (window size, width)"
        )
    save_checkpoint(out, {
        key: {f"backbone.net.{k}": v for k, v in backbone.net.state_dict().items()},
        "config": {"model": {"arch": arch}, "crops": {"global_size": 224}},
        "imported_from": str(path),
    })  # fmt: skip
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
    return Path(out), ARCHS[ckpt["config"]["model"]["arch"]][0]
