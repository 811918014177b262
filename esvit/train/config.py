"""The training config: a dataclass tree with the paper's defaults (docs/algorithm.md §1.5, §3).

``configs/paper/*.yaml`` and ``configs/pretrain/*.yaml`` are small diffs on these defaults; unknown keys raise;
``a.b=c`` overrides work; the resolved config is written to ``<run>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import yaml

from esvit.archs import ARCHS, arch_names
from esvit.errors import ConfigError
from esvit.fields import apply_overrides, from_dict, load_yaml, option, to_dict
from esvit.launch.config import LaunchConfig

__all__ = [
    "LaunchConfig",
    "TrainConfig",
    "load_train_config",
    "dump_train_config",
    "loader_workers",
    "per_device_batch",
    "training_differences",
    "training_digest",
    "RESUMABLE_KEYS",
]


@dataclasses.dataclass
class ModelConfig:
    arch: str = option(
        "swin_tiny_w7",
        choices=arch_names,
        help="Backbone (esvit.models.ARCHS): swin_tiny_w7, ..., vit_small, resnet50.",
    )
    drop_path_rate: float = option(
        0.1, min=0, max=1, help="Student stochastic depth (Swin-T 0.1, Swin-S/B 0.2); teacher 0."
    )
    out_dim: int = option(65536, gt=0, help="Prototypes K of both heads.")
    hidden_dim: int = option(2048, gt=0, help="Head MLP hidden width.")
    bottleneck_dim: int = option(256, gt=0, help="Head bottleneck before the weight-normalised last layer.")
    norm_last_layer: bool = option(False, help="Freeze the last layer's weight_g at 1 (README runs: false).")


@dataclasses.dataclass
class LossConfig:
    region_loss_weight: float = option(
        0.5, min=0, max=1, help="w in (1-w) L_V + w L_R per pair; 0 = plain DINO, no region head."
    )
    student_temp: float = option(0.1, gt=0, help="Student temperature tau_s.")
    teacher_temp: float = option(0.07, gt=0, help="Teacher temperature after warm-up.")
    warmup_teacher_temp: float = option(0.04, gt=0, help="Teacher temperature at epoch 0.")
    warmup_teacher_temp_epochs: int = option(30, min=0, help="Epochs of linear teacher-temperature warm-up.")
    center_momentum: float = option(0.9, min=0, max=1, help="EMA momentum of both centres.")


@dataclasses.dataclass
class OptimConfig:
    epochs: int = option(300, gt=0, help="Training epochs.")
    batch_size_per_device: int = option(
        32,
        gt=0,
        help="Images per device (GPU or CPU process) per step; derived from total_batch_size when that is set.",
    )
    total_batch_size: int | None = option(
        None,
        gt=0,
        help="Images per step over all processes (the paper's batch, e.g. 512): batch_size_per_device = "
        "total / world size, and the world size must divide it; null: batch_size_per_device as given.",
    )
    lr: float = option(5e-4, gt=0, help="Base learning rate, scaled by total batch / 256.")
    min_lr: float = option(1e-6, min=0, help="Learning rate at the end of the cosine.")
    warmup_epochs: int = option(10, min=0, help="Epochs of linear learning-rate warm-up.")
    weight_decay: float = option(0.04, min=0, help="Weight decay at the start (cosine schedule).")
    weight_decay_end: float = option(0.4, min=0, help="Weight decay at the end.")
    momentum_teacher: float = option(0.996, min=0, max=1, help="Teacher EMA momentum at the start (cosine to 1).")
    clip_grad: float = option(3.0, min=0, help="Per-parameter gradient-norm clip (0 = off), as the reference does it.")
    freeze_last_layer: int = option(1, min=0, help="Epochs during which the heads' last layers get no gradient.")


@dataclasses.dataclass
class CropsConfig:
    global_size: int = option(224, gt=0, help="Side of the 2 global crops.")
    global_scale: list[float] = option([0.4, 1.0], help="RandomResizedCrop scale of global crops.")
    local_number: list[int] = option([8], help="Local crops per size (list: several sizes allowed).")
    local_size: list[int] = option([96], help="Side of local crops, one per entry of local_number.")
    local_scale: list[float] = option([0.05, 0.4], help="RandomResizedCrop scale of local crops.")


@dataclasses.dataclass
class DataConfig:
    shards: str = option("", help="Training shard folder (holding manifest.json); set by the pretrain_model rule.")
    num_workers: int | None = option(
        None,
        min=0,
        help="Data-loader worker processes per device; null: the allocation's cores less one for the training "
        "process (SLURM_CPUS_PER_TASK - 1 in a Slurm job), else 2. They persist across epochs.",
    )
    shuffle_buffer: int = option(2000, gt=0, help="Samples in each worker's shuffle buffer.")
    samples_per_epoch: int | None = option(None, gt=0, help="Samples per epoch (default: the shard set's total).")
    verify: Literal["sha256", "count"] = option(
        "sha256",
        help="Check each shard against its manifest as it is read: sha256 (hashed while streaming) and the "
        "sample count, or the count only; a damaged shard stops training naming it.",
    )
    on_bad_image: Literal["stop", "skip"] = option(
        "stop", help="An image in a shard that does not decode: stop (naming shard and key) or skip it (logged)."
    )
    augmentation: Literal["fast", "reference"] = option(
        "fast",
        help="fast: the reference's random crops and colour ops, computed cheaper (reduced-scale JPEG decode, "
        "torch uint8 resize, OpenCV colour ops, uint8 to the device); reference: PIL + torchvision per crop, as the "
        "official code.",
    )
    photometric_on: Literal["loader", "device"] = option(
        "loader",
        help="fast augmentation only: colour ops in the loader workers (OpenCV) or in batches on the training device "
        "(e.g. the GPU).",
    )


@dataclasses.dataclass
class RunConfig:
    seed: int = option(0, min=0, help="Seed of initialisation and data order.")
    device: Literal["auto", "cpu", "cuda"] = option("auto", help="auto: cuda when available.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto",
        help="auto: bf16 autocast on GPUs that support it, fp32 on CPU (exact; on CPUs with bf16 matrix "
        "instructions, e.g. avx512_bf16, bf16 can be over 2x faster: `esvit bench train --precision bf16` measures "
        "it).",
    )
    threads: int | None = option(None, gt=0, help="torch CPU threads (default: torch's choice).")
    checkpoint_every_steps: int = option(0, min=0, help="Also checkpoint every N steps (0: only at epoch ends).")
    keep_every_epochs: int = option(
        5, min=0, help="Keep checkpoint{N:04d}.pth (after N epochs) every N epochs (0: never)."
    )
    keep_epochs: list[int] = option(
        [],
        help="Also keep checkpoint{N:04d}.pth after these epochs (a continual run's starting point), whatever "
        "keep_every_epochs says.",
    )
    log_every_steps: int = option(10, gt=0, help="Steps between log.jsonl / TensorBoard records.")
    max_steps: int | None = option(None, gt=0, help="Stop after this many global steps (benchmarks, smoke runs).")
    continual_from: str | None = option(
        None, help="View-only checkpoint to start region-level training from (continual mode)."
    )
    tensorboard: bool = option(True, help="Write TensorBoard scalars to <run>/tb.")
    deterministic: bool = option(
        False,
        help="Deterministic GPU kernels (torch.use_deterministic_algorithms, cuBLAS workspace :4096:8, no cuDNN "
        "autotuning): a resumed GPU run then ends bitwise-identical too, at a speed cost `esvit bench train "
        "--deterministic` measures.",
    )
    dist_timeout_min: float = option(
        30.0,
        gt=0,
        help="Minutes a collective waits for the other ranks before failing (a hung or dead rank ends the job "
        "instead of stalling it).",
    )
    reuse_memory: bool = option(True, help="Keep freed host memory for reuse (glibc); large CPU steps ~1.3x faster.")
    chunked_heads: bool = option(
        True,
        help="Apply the heads' K-wide last layers inside the loss, a chunk of rows at a time, so no [tokens, K] "
        "logits exist (same loss to float rounding, far less memory; `esvit bench train --no-chunked-heads` compares).",
    )
    head_chunk_rows: int | None = option(
        None,
        gt=0,
        help="Rows per chunk of the chunked heads (default: a 128 MB fp32 [rows, K] block on CPU, 1 GB on GPUs).",
    )


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = option(factory=ModelConfig, help="Backbone and heads.")
    loss: LossConfig = option(factory=LossConfig, help="View and region losses.")
    optim: OptimConfig = option(factory=OptimConfig, help="Optimiser and schedules.")
    crops: CropsConfig = option(factory=CropsConfig, help="Multi-crop augmentation.")
    data: DataConfig = option(factory=DataConfig, help="Training data.")
    run: RunConfig = option(factory=RunConfig, help="Seeds, device, checkpoints, logging.")
    launch: LaunchConfig = option(factory=LaunchConfig, help="Local or Slurm (submitit) launch.")

    def check(self) -> TrainConfig:
        c = self.crops
        if len(c.local_number) != len(c.local_size):
            raise ConfigError(
                f"crops.local_number {c.local_number} and crops.local_size {c.local_size} must have equal lengths"
            )
        for key, scale in (("crops.global_scale", c.global_scale), ("crops.local_scale", c.local_scale)):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ConfigError(f"{key} must be [low, high] with 0 < low <= high <= 1 (got {scale})")
        if any(n < 0 for n in c.local_number) or any(s <= 0 for s in c.local_size):
            raise ConfigError(
                f"crops.local_number must be >= 0 and crops.local_size > 0 (got {c.local_number}, {c.local_size})"
            )
        smallest = _min_input(self.model.arch)
        if c.global_size < smallest or any(s < smallest for n, s in zip(c.local_number, c.local_size) if n):
            raise ConfigError(
                f"crops.global_size {c.global_size} / crops.local_size {c.local_size}: {self.model.arch} needs crops "
                f"of at least {smallest} px (one token at its last stage); raise the smaller one"
            )
        if any(s > c.global_size for n, s in zip(c.local_number, c.local_size) if n):
            raise ConfigError(
                f"crops.local_size {c.local_size} is larger than crops.global_size {c.global_size}: local crops are "
                "the small views"
            )
        o = self.optim
        if o.warmup_epochs > o.epochs:
            raise ConfigError(f"optim.warmup_epochs {o.warmup_epochs} is longer than optim.epochs {o.epochs}")

        la = self.launch
        if la.gpus_per_node and la.tasks_per_node not in (None, la.gpus_per_node):
            raise ConfigError(
                f"launch.tasks_per_node {la.tasks_per_node} != launch.gpus_per_node {la.gpus_per_node}: one task per "
                "GPU; "
                "leave tasks_per_node unset on GPUs"
            )
        return self


def _min_input(arch: str) -> int:
    """The smallest input side an architecture takes (its patch), from the plain table: no model is built."""
    return ARCHS[arch].min_input


def loader_workers(data: DataConfig) -> int:
    """``data.num_workers``, or when unset the cores this process was given less one for itself (Slurm's
    ``SLURM_CPUS_PER_TASK``; at least 1), or 2 outside a Slurm allocation."""
    if data.num_workers is not None:
        return data.num_workers
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(int(cpus) - 1, 1) if cpus.isdigit() else 2


def per_device_batch(optim: OptimConfig, world_size: int) -> int:
    """The per-process batch of ``optim`` at ``world_size`` processes: ``total_batch_size / world_size`` when the
    total is set (refusing a world size that does not divide it), else ``batch_size_per_device``."""
    total = optim.total_batch_size
    if total is None:
        return optim.batch_size_per_device
    if total % world_size:
        fits = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if total % n == 0]
        raise ConfigError(
            f"optim.total_batch_size {total} cannot be split over {world_size} processes: launch a number of processes "
            f"that divides it ({', '.join(map(str, fits))}, ...), or set optim.total_batch_size=null and "
            "optim.batch_size_per_device"
        )
    return total // world_size


def load_train_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), site: str | Path | None = None
) -> TrainConfig:
    """Defaults, then the site file's ``launch`` keys, then the YAML diff at ``path`` (its ``base:`` key names a
    file it extends), then overrides."""
    data: dict = {}
    if site is not None:
        site_data = load_yaml(site)
        unknown = set(site_data) - {f.name for f in dataclasses.fields(LaunchConfig)}
        if unknown:
            raise ConfigError(
                f"{site}: unknown launch keys {sorted(unknown)}; see LaunchConfig in esvit/launch/config.py"
            )
        data["launch"] = site_data
    if path is not None:
        _merge(data, _with_bases(Path(path)))
    apply_overrides(data, overrides)
    return from_dict(TrainConfig, data).check()


def _with_bases(path: Path, seen: tuple = ()) -> dict:
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to {base_path}")
    merged = _with_bases(base_path, seen + (base_path,))
    _merge(merged, data)
    return merged


def _merge(into: dict, diff: dict) -> None:
    for k, v in diff.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


# Keys a run may change when it resumes: how long it runs, where and how it logs, checkpoints and loads data,
# and where it runs. Everything else decides what is trained, so a resume with another value is refused.
RESUMABLE_KEYS = (
    # the batch split may change with the job's shape: the total (and so the lr and the steps per epoch) is what
    # must not, and the resume checks the steps per epoch
    "optim.batch_size_per_device",
    "optim.total_batch_size",
    "optim.epochs",
    "data.shards",
    "data.num_workers",
    "data.verify",
    "data.on_bad_image",
    "run.device",
    "run.threads",
    "run.checkpoint_every_steps",
    "run.keep_every_epochs",
    "run.keep_epochs",
    "run.log_every_steps",
    "run.max_steps",
    "run.continual_from",
    "run.tensorboard",
    "run.reuse_memory",
    "run.dist_timeout_min",
    "run.chunked_heads",
    "run.head_chunk_rows",
    "launch.",
)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _defaults() -> dict[str, Any]:
    return _flat(to_dict(TrainConfig()))


def training_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """``key: saved -> now`` for every training-relevant key (not in :data:`RESUMABLE_KEYS`) that differs
    between a checkpoint's resolved config and ``cfg``."""
    old, new = {**_defaults(), **_flat(saved)}, _flat(to_dict(cfg))  # a key older checkpoints lack had its default
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(RESUMABLE_KEYS))
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in keys if old.get(k) != new.get(k)]


def training_digest(cfg: TrainConfig) -> str:
    """A short hash of what decides the trained weights (the config less :data:`RESUMABLE_KEYS`): the pretrain
    rule's parameter, so Snakemake reruns a run when its training config changes, and only then."""
    import hashlib
    import json

    default = _defaults()  # only what differs from the defaults: a new key does not change it
    flat = {k: v for k, v in _flat(to_dict(cfg)).items() if not k.startswith(RESUMABLE_KEYS) and default.get(k, k) != v}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_train_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
