"""Frozen features, extracted once per (checkpoint, dataset, split) and cached.

A cache file holds the pooled feature (k-NN, transfer probes) and the last-n-blocks concatenation (the
ImageNet linear protocol) as float16, the labels and sample keys, and ``meta``: the checkpoint's sha256 and
the extraction settings. A cache whose meta differs from the request is recomputed. Extraction writes parts
every few hundred batches, so a killed job resumes where it stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from esvit.archs import ARCHS
from esvit.atomic import atomic_path
from esvit.checkpoint_file import CheckpointError, load_checkpoint
from esvit.data.pipeline import eval_pipeline, make_loader, open_shards
from esvit.data.shards import file_sha256
from esvit.data.transforms import eval_transform
from esvit.defaults import field_default
from esvit.errors import UsageError
from esvit.eval.checks import FeatureError, first_non_finite
from esvit.eval.config import EvalConfig
from esvit.models import Backbone
from esvit.models.checkpoint import backbone_state
from esvit.progress import progress

__all__ = ["load_backbone", "extract", "load_features", "targets"]

# The workflow config's defaults (eval.batch_size, eval.workers), which the rule and `esvit extract` pass.
BATCH_SIZE: int = field_default(EvalConfig, "batch_size")
WORKERS: int = field_default(EvalConfig, "workers")


def load_backbone(
    checkpoint: str | Path | None, arch: str | None = None, key: str = "teacher", seed: int = 0
) -> tuple[Backbone, dict[str, Any]]:
    """The frozen backbone to evaluate, and what identifies it.

    Args:
        checkpoint: one of this project's checkpoints (its ``key`` network's backbone is used), or ``None``
            for a randomly initialised ``arch`` (the baseline).
        arch: required without a checkpoint; checked against the checkpoint's otherwise.
        key: ``teacher`` (the paper's choice) or ``student``.
        seed: initialisation seed of the random baseline.
    """
    if checkpoint is None:
        if not arch:
            raise FeatureError("a random-init baseline needs --arch (e.g. --arch swin_tiny_w7)")
        torch.manual_seed(seed)
        return Backbone(arch).eval(), {
            "checkpoint": None,
            "checkpoint_sha256": f"random-init-seed{seed}",
            "arch": arch,
            "seed": seed,
        }
    ckpt = load_checkpoint(checkpoint)
    state = backbone_state(ckpt, key, checkpoint)
    ck_arch = ckpt["config"]["model"]["arch"]
    if arch and arch != ck_arch:
        raise CheckpointError(f"{checkpoint}: holds a {ck_arch}, not a {arch}")
    net = Backbone(ck_arch)
    net.net.load_state_dict(state, strict=True)
    meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "arch": ck_arch,
        "global_step": ckpt.get("global_step"),
        "key": key,
    }
    crop = ckpt["config"].get("crops", {}).get("global_size")
    if crop:
        meta["train_crop_size"] = int(crop)  # the default evaluation size
    return net.eval(), meta


def check_input_size(arch: str, size: int, what: str) -> None:
    """Refuse an image side below the architecture's smallest input (one last-stage token) in one message."""
    smallest = ARCHS[arch].min_input
    if size < smallest:
        raise UsageError(f"{what} {size}: {arch} needs images of at least {smallest} px (one token at its last stage)")


@torch.no_grad()
def extract(
    backbone: Backbone,
    shard_dir: str | Path,
    out: str | Path,
    meta: dict[str, Any],
    image_size: int = 224,
    batch_size: int = BATCH_SIZE,
    n_blocks: int = 4,
    num_workers: int = WORKERS,
    device: str = "cpu",
    part_batches: int = 200,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Extract and cache the features of one shard set.

    Returns:
        The cache dict (also written to ``out``): pooled, last_blocks (float16), labels, keys, meta.
    """
    if isinstance(backbone, Backbone):  # (a wrapped network, e.g. in tests, is taken as it is)
        check_input_size(backbone.arch, image_size, "--image-size")
    out = Path(out)
    shards = open_shards(shard_dir)
    meta = {
        **meta,
        "shards": str(shard_dir),
        "shards_total": shards.total,
        "num_classes": shards.manifest.get("num_classes"),
        "multilabel": bool(shards.manifest.get("multilabel", False)),
        "image_size": image_size,
        "n_blocks": n_blocks,
        "transform": f"resize {round(image_size * 256 / 224)} bicubic + center crop {image_size}",
    }
    if out.exists():
        cached = load_features(out)
        if cached["meta"] == meta:
            return cached
    parts_dir = out.with_name(out.name + ".parts")
    part_meta = {**meta, "batch_size": batch_size, "num_workers": num_workers, "part_batches": part_batches}
    parts = sorted(parts_dir.glob("part-*.pt")) if parts_dir.exists() else []
    if parts and torch.load(parts[0], weights_only=True)["meta"] != part_meta:
        shutil.rmtree(parts_dir)  # from other settings or another checkpoint
        parts = []
    parts_dir.mkdir(parents=True, exist_ok=True)
    done_batches = len(parts) * part_batches
    backbone = backbone.to(device).eval()
    pipe = eval_pipeline(shards, eval_transform(image_size), batch_size)
    # counted in images: with workers, each worker's last batch may be short, so batches have no exact total
    bar = progress(
        shards.total,
        f"extract {Path(shard_dir).name}",
        unit="img",
        initial=min(done_batches * batch_size, shards.total),
        enabled=show_progress,
    )
    buf: dict[str, list] = {"pooled": [], "last_blocks": [], "labels": [], "keys": []}

    def flush() -> None:
        if not buf["keys"]:
            return
        part = {
            "pooled": torch.cat(buf["pooled"]),
            "last_blocks": torch.cat(buf["last_blocks"]),
            "labels": torch.cat(buf["labels"]),
            "keys": sum(buf["keys"], []),
            "meta": part_meta,
        }
        with atomic_path(parts_dir / f"part-{len(list(parts_dir.glob('part-*.pt'))):05d}.pt") as tmp:
            torch.save(part, tmp)
        for v in buf.values():
            v.clear()

    for i, (keys, images, labels) in enumerate(make_loader(pipe, num_workers)):
        if i < done_batches:
            continue
        images = images.to(device)
        pooled, blocks = backbone.pooled_and_last_blocks(images, n_blocks)  # one forward pass for both
        for name, feats in (("pooled", pooled), ("last_blocks", blocks)):
            bad = first_non_finite(feats)
            if bad is not None:
                raise FeatureError(
                    f"{meta.get('checkpoint') or 'the random-init ' + str(meta.get('arch'))} gives non-finite {name} "
                    f"features for sample {keys[bad]} of {shard_dir}: the checkpoint has diverged (or the image is "
                    "broken); nothing was cached"
                )
            half = feats.half()  # float16 caches; a batch beyond its range (65,504) is kept in float32
            buf[name].append((half if first_non_finite(half) is None else feats.float()).cpu())
        buf["labels"].append(labels.long())
        buf["keys"].append(list(keys))
        bar.update(len(keys))
        if (i + 1) % part_batches == 0:
            flush()
    flush()
    bar.close()
    loaded = [torch.load(p, weights_only=True) for p in sorted(parts_dir.glob("part-*.pt"))]
    result = {k: torch.cat([p[k] for p in loaded]) for k in ("pooled", "last_blocks", "labels")}
    result["keys"] = sum((p["keys"] for p in loaded), [])
    result["meta"] = meta
    if len(result["keys"]) != shards.total or len(set(result["keys"])) != shards.total:
        shutil.rmtree(parts_dir)
        raise FeatureError(
            f"{shard_dir}: read {len(result['keys'])} samples ({len(set(result['keys']))} distinct), the manifest says "
            f"{shards.total}; the shard set is damaged: run `esvit shard --verify {shard_dir}`"
        )
    with atomic_path(out) as tmp:
        torch.save(result, tmp)
    shutil.rmtree(parts_dir)
    return result


def load_features(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"feature cache {str(path)!r} does not exist; run `esvit extract` for it")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as exc:
        raise FeatureError(
            f"cannot read feature cache {str(path)!r} ({type(exc).__name__}); delete it and run `esvit extract` again"
        ) from None
    if not isinstance(data, dict) or not {"pooled", "labels", "meta"} <= set(data):
        raise FeatureError(f"{path}: not an esvit feature cache; run `esvit extract` for it")
    return data


def targets(cache: dict[str, Any]) -> torch.Tensor:
    """A feature cache's training targets: its class indices [N], or the multi-hot targets [N, C] of a
    multi-label set (stored as bit masks, see esvit.data.transfer)."""
    if not cache["meta"].get("multilabel"):
        return cache["labels"]
    from esvit.data.transfer import decode_multilabel

    return torch.from_numpy(decode_multilabel(cache["labels"].numpy(), cache["meta"]["num_classes"]))
