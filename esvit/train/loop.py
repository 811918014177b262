"""EsViT pretraining, top to bottom in DINO's phases: set-up -> data -> student/teacher -> loss -> optimizer
-> schedules -> resume -> loop.

One process on CPU or one GPU, DDP-ready (env:// rendezvous; see esvit.launch). Resuming restores every
stateful object, so a run interrupted at step k and resumed ends bitwise-identical to an uninterrupted one
(on CPU; tests/unit/test_train.py checks it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from esvit.atomic import atomic_write_json, atomic_write_text
from esvit.checkpoint_file import CheckpointError, load_checkpoint, save_checkpoint
from esvit.data.multicrop import FastMultiCrop
from esvit.data.pipeline import EpochCursor, make_loader, open_shards, train_pipeline
from esvit.data.transforms import MultiCropAugmentation
from esvit.device import DeviceError, resolve_device
from esvit.errors import TrainingError
from esvit.fields import to_dict
from esvit.lock import LockError, RunLock
from esvit.losses import EsViTLoss
from esvit.models import Backbone, EsViTNet
from esvit.progress import progress
from esvit.train.config import TrainConfig, dump_train_config, loader_workers, per_device_batch, training_differences
from esvit.train.distributed import (
    DistInfo,
    broadcast_batch_norm_buffers,
    close_distributed,
    gather_objects,
    init_distributed,
    rank_fingerprints,
)
from esvit.train.ema import ema_update
from esvit.train.memory import keep_freed_memory
from esvit.train.schedules import cosine_schedule
from esvit.train.state import rng_state, set_rng_state

__all__ = ["train", "TrainingError", "build_models", "param_groups", "clip_gradients", "Trainer"]

log = logging.getLogger("esvit")


# ---------------------------------------------------------------------------------------------- helpers


def build_models(cfg: TrainConfig) -> tuple[EsViTNet, EsViTNet]:
    """Student (drop path from the config) and teacher (no drop path, a copy of the student, no gradients)."""
    m = cfg.model
    region = cfg.loss.region_loss_weight > 0
    heads = dict(
        out_dim=m.out_dim,
        region=region,
        norm_last_layer=m.norm_last_layer,
        chunked_heads=cfg.run.chunked_heads,
        hidden_dim=m.hidden_dim,
        bottleneck_dim=m.bottleneck_dim,
    )
    student = EsViTNet(Backbone(m.arch, m.drop_path_rate), **heads)
    teacher = EsViTNet(Backbone(m.arch, 0.0), **heads)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups (docs/algorithm.md §1.5): weights with ndim > 1 get the weight-decay schedule; biases and norm
    parameters (ndim 1) get none. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> None:
    """Per-parameter clipping as the reference does it: each tensor's gradient norm is clipped to ``clip``
    independently (not a global norm), with factor clip / (norm + 1e-6) applied only when below 1."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coef.unbind()))


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    if epoch < freeze_epochs:
        for name, p in model.named_parameters():
            if "last_layer" in name:
                p.grad = None


def build_augmentation(cfg: TrainConfig) -> MultiCropAugmentation | FastMultiCrop:
    """The multi-crop augmentation of ``cfg.crops``, implemented as ``cfg.data.augmentation`` says."""
    c = cfg.crops
    if cfg.data.augmentation == "reference":
        return MultiCropAugmentation(c.global_size, c.global_scale, c.local_number, c.local_size, c.local_scale)
    return FastMultiCrop(
        c.global_size,
        c.global_scale,
        c.local_number,
        c.local_size,
        c.local_scale,
        photometric_on=cfg.data.photometric_on,
    )


def _device(cfg: TrainConfig) -> torch.device:
    """One GPU per process (``LOCAL_RANK % visible GPUs``), or the CPU."""
    try:
        return resolve_device(cfg.run.device)
    except DeviceError as exc:
        raise TrainingError(f"run.device: {exc}") from None


def deterministic_kernels() -> None:
    """GPU kernels that give the same bits every run: cuBLAS with a fixed workspace (set before its first use),
    no cuDNN autotuning, and PyTorch's deterministic implementations (a warning names any op that has none)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    p = cfg.run.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if p in ("bf16", "fp16") and device.type == "cpu" and p == "fp16":
        raise TrainingError("run.precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return p


# ------------------------------------------------------------------------------------------------ trainer


@dataclass
class StepStats:
    """One step's losses (this rank's) and the stop request the ranks agreed on (0: none, 1: time limit,
    2: cancel / requeue / preemption)."""

    loss: float
    view: float
    region: float | None
    stop: int = 0
    teacher_entropy: float | None = None


class Trainer:
    """Holds the phases' objects; ``train()`` drives it. Tests and ``esvit bench train`` use ``step()``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, iters_per_epoch: int, dist_info: DistInfo | None = None):
        # -- set-up: device, precision, threads, seeds --------------------------------------------------------
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = _device(cfg)
        self.dist = dist_info or DistInfo()
        self.precision = _precision(cfg, self.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.reuse_memory:
            keep_freed_memory()
        if cfg.run.deterministic:
            deterministic_kernels()
        self.iters_per_epoch = iters_per_epoch

        # -- student and teacher: the same initial weights on every rank ---------------------------------------
        # (DDP would broadcast rank 0's student, but the teacher is copied before that and never synchronised.)
        torch.manual_seed(cfg.run.seed)
        self.student, self.teacher = build_models(cfg)
        torch.manual_seed(cfg.run.seed + self.dist.rank)  # drop path and anything random after: per rank
        if self.dist.distributed and self.student.backbone.features.uses_batch_norm and self.device.type == "cuda":
            # SyncBatchNorm runs on GPUs only; CPU (gloo) ranks keep per-process BatchNorm statistics
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.student_ddp: nn.Module = self.student
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_ddp = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

        # -- loss ----------------------------------------------------------------------------------------------
        lc, oc = cfg.loss, cfg.optim
        self.loss = EsViTLoss(
            cfg.model.out_dim,
            oc.epochs,
            lc.region_loss_weight,
            lc.student_temp,
            lc.teacher_temp,
            lc.warmup_teacher_temp,
            lc.warmup_teacher_temp_epochs,
            lc.center_momentum,
            chunk_rows=cfg.run.head_chunk_rows,
        ).to(self.device)

        # -- optimizer -----------------------------------------------------------------------------------------
        self.optimizer = torch.optim.AdamW(param_groups(self.student))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        # -- schedules (per iteration; the teacher temperature is per epoch, inside the loss) ------------------
        total_batch = oc.batch_size_per_device * self.dist.world_size
        self.lr = cosine_schedule(oc.lr * total_batch / 256.0, oc.min_lr, oc.epochs, iters_per_epoch, oc.warmup_epochs)
        self.wd = cosine_schedule(oc.weight_decay, oc.weight_decay_end, oc.epochs, iters_per_epoch)
        self.momentum = cosine_schedule(oc.momentum_teacher, 1.0, oc.epochs, iters_per_epoch)
        self.epoch, self.it, self.global_step = 0, 0, 0
        self.data_identity: str | None = None  # what the run trains on (set by train(); checked on resume)
        # called with a phase's name as each part of a step ends (teacher, student, loss, backward, agree,
        # optimizer, ema): `esvit bench train --breakdown` times the parts with it
        self.mark_phase: Callable[[str], None] | None = None

    # -- resume -----------------------------------------------------------------------------------------------
    def state(self, rng_ranks: list | None = None) -> dict[str, Any]:
        """Everything a resume needs; ``rng_ranks``: every rank's RNG state (gathered by the caller), so each
        rank of a resumed distributed run continues its own random stream."""
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "it": self.it,
            "global_step": self.global_step,
            "iters_per_epoch": self.iters_per_epoch,
            "rng": rng_state(),
            "rng_ranks": rng_ranks,
            "config": json.loads(json.dumps(to_dict(self.cfg))),
            "data_identity": self.data_identity,
        }

    def load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        saved, now = ckpt.get("data_identity"), self.data_identity
        if saved and now and saved != now:
            raise CheckpointError(
                f"{path}: the run was trained on other shards ({saved}; now {now}): data.shards may move, not change. "
                "Point it at the run's own shard set, or start afresh with `esvit pretrain --restart`"
            )
        changed = training_differences(ckpt.get("config", {}), self.cfg)
        if changed:
            raise CheckpointError(
                f"{path}: the run was trained with other settings ({'; '.join(changed[:6])}"
                f"{'; ...' if len(changed) > 6 else ''}). Resume it with its own config "
                f"({path.parent / 'config.yaml'}), "
                "or start afresh with `esvit pretrain --restart` (the old run folder is kept, renamed)"
            )
        if ckpt.get("iters_per_epoch") != self.iters_per_epoch:
            raise CheckpointError(
                f"{path}: saved with {ckpt.get('iters_per_epoch')} iterations per epoch, this run has "
                f"{self.iters_per_epoch} (batch size, world size or data changed); resume with the same settings"
            )
        self.student.load_state_dict(ckpt["student"])
        self.teacher.load_state_dict(ckpt["teacher"])
        self.loss.load_state_dict(ckpt["loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.it, self.global_step = ckpt["epoch"], ckpt["it"], ckpt["global_step"]
        ranks = ckpt.get("rng_ranks")
        set_rng_state(ranks[self.dist.rank] if ranks and len(ranks) == self.dist.world_size else ckpt["rng"])

    def load_continual(self, path: Path) -> None:
        """Start region-level training from a view-only checkpoint, this project's or an official one as
        ``main_esvit.py`` saves it (``docs/checkpoints.md``, continuation): backbone + view head restored in
        student and teacher, ``head_dense`` freshly initialised (the teacher copies the student's), the view
        centre restored and ``center_grid`` zero, a fresh optimizer, and the schedules continue at the
        checkpoint's epoch (an official checkpoint records epochs completed: global step = epoch x steps per
        epoch of this run)."""
        from esvit.models.checkpoint import is_official, load_official_checkpoint, official_to_esvit

        ckpt = load_official_checkpoint(path)
        official = is_official(ckpt)
        for name, net in (("student", self.student), ("teacher", self.teacher)):
            if name not in ckpt:
                raise CheckpointError(f"{path}: no {name!r} weights inside (keys {sorted(map(str, ckpt))[:8]})")
            source = official_to_esvit(ckpt[name], net.backbone) if official else ckpt[name]
            state = {k: v for k, v in source.items() if not k.startswith("head_dense.")}
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as exc:
                detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
                raise CheckpointError(
                    f"{path}: {name} does not fit model {self.cfg.model.arch} ({detail}); set model.* (out_dim, "
                    "hidden_dim, bottleneck_dim) to the checkpoint's"
                ) from None
            bad = [k for k in missing if not k.startswith("head_dense.")] + list(unexpected)
            if bad:
                raise CheckpointError(f"{path}: {name} does not match model {self.cfg.model.arch} ({bad[:4]} ...)")
        if self.teacher.head_dense is not None:
            self.teacher.head_dense.load_state_dict(self.student.head_dense.state_dict())
        center = (ckpt.get("dino_loss") if official else ckpt.get("loss")) or {}
        if "center" not in center or center["center"].shape != self.loss.center.shape:
            raise CheckpointError(f"{path}: no view centre of shape {tuple(self.loss.center.shape)} inside")
        self.loss.center.copy_(center["center"])
        self.loss.center_grid.zero_()
        if official:
            self.epoch, self.it, self.global_step = int(ckpt["epoch"]), 0, int(ckpt["epoch"]) * self.iters_per_epoch
        else:
            self.epoch, self.it, self.global_step = ckpt["epoch"], ckpt["it"], ckpt["global_step"]
        log.info(
            "continual: region-level training starts from %s at epoch %d, step %d", path, self.epoch, self.global_step
        )

    # -- one step ---------------------------------------------------------------------------------------------
    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, crops: list[torch.Tensor], stop_request: int = 0) -> StepStats:
        """One optimisation step at ``self.epoch`` / ``self.global_step``, then the EMA update.

        ``stop_request``: this rank's wish to stop after this step (a signal's code). The ranks agree on it and on
        the loss being finite in one collective after the backward pass (every rank has reached it, so none can
        hang), and read the result with the step's only host sync. A non-finite loss on any rank stops every
        rank before the update, naming the rank.
        """
        g, epoch = self.global_step, self.epoch
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[g])
            if i == 0:
                group["weight_decay"] = float(self.wd[g])
        mark = self.mark_phase or (lambda name: None)
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        self.optimizer.zero_grad(set_to_none=True)  # now: the last step's gradients never sit beside the activations
        with self.autocast():  # the networks in half precision; the loss (and matching) in fp32, outside it
            with torch.no_grad():
                teacher_out = self.teacher(crops[:2])[0]
            mark("teacher")
            student_out = self.student_ddp(crops)
            mark("student")
        parts = self.loss(student_out, teacher_out, epoch)
        del student_out, teacher_out  # what backward needs, autograd keeps; the rest (teacher logits, ...) goes now
        loss = parts.total
        mark("loss")
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        mark("backward")
        stats = self._agree(parts, stop_request)
        mark("agree")
        bad = [r for r, v in enumerate(stats[0]) if not math.isfinite(v)]
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            where = f" on rank {', '.join(map(str, bad))} of {self.dist.world_size}" if self.dist.distributed else ""
            raise TrainingError(
                f"loss is {stats[0][bad[0]]}{where} at epoch {epoch}, step {g}; stopped, the last good checkpoint is "
                f"kept in {self.run_dir}. Try a lower optim.lr, run.precision=fp32, or a lower loss.teacher_temp"
            )
        if self.scaler is None:
            if self.cfg.optim.clip_grad:
                clip_gradients(self.student, self.cfg.optim.clip_grad)
            cancel_last_layer_grads(self.student, epoch, self.cfg.optim.freeze_last_layer)
            self.optimizer.step()
        else:
            if self.cfg.optim.clip_grad:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.student, self.cfg.optim.clip_grad)
            cancel_last_layer_grads(self.student, epoch, self.cfg.optim.freeze_last_layer)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        mark("optimizer")
        ema_update(self.teacher, self.student, float(self.momentum[g]))
        mark("ema")
        self.global_step += 1
        self.it += 1
        r = self.dist.rank
        return StepStats(
            stats[0][r],
            stats[1][r],
            stats[2][r] if parts.region is not None else None,
            int(max(stats[3])),
            stats[4][r] if parts.teacher_entropy is not None else None,
        )

    def _agree(self, parts, stop_request: int) -> list[list[float]]:
        """[loss, view, region, stop request, teacher entropy] of every rank, as Python floats: each rank fills its
        own column of a [5, world] tensor, one all-reduce (sum) shares them, one ``tolist`` brings them to the host."""
        world = self.dist.world_size
        flags = torch.zeros(5, world, dtype=torch.float32, device=self.device)
        zero = torch.zeros((), device=self.device)
        region = parts.region if parts.region is not None else zero
        entropy = parts.teacher_entropy if parts.teacher_entropy is not None else zero
        flags[:, self.dist.rank] = torch.stack(
            [
                parts.total.detach().float(),
                parts.view.float(),
                region.float(),
                torch.tensor(float(stop_request), device=self.device),
                entropy.float(),
            ]
        )
        if self.dist.distributed:
            dist.all_reduce(flags)
        return flags.tolist()


# --------------------------------------------------------------------------------------------------- train


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    should_stop: Callable[[], int | bool] = lambda: 0,
    show_progress: bool = True,
) -> Path:
    """Pretrain, resuming from ``<run_dir>/checkpoint.pth`` when it exists.

    Args:
        cfg: the resolved training config.
        run_dir: where checkpoints, ``log.jsonl``, ``config.yaml``, ``tb/`` and finally ``final.pth`` +
            ``done.json`` go.
        should_stop: polled every step, on each rank, for that rank's wish to stop after the step (a code: 1 a
            time limit, 2 a cancel; True counts as 1). The ranks agree inside the step (the highest code wins);
            then the run checkpoints and returns. A ``should_stop`` with an ``agree(code)`` method is told the
            agreed code (:class:`esvit.launch.signals.GracefulStop`).
        show_progress: progress bar / lines.

    Returns:
        The path of the last checkpoint written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist_info = init_distributed(_device(cfg), timeout_min=cfg.run.dist_timeout_min)
    try:
        with _hold_run_folder(run_dir, dist_info):
            return _train(cfg, run_dir, dist_info, should_stop, show_progress)
    finally:  # also when a rank fails: the others are told, no process group is left behind
        close_distributed()


@contextlib.contextmanager
def _hold_run_folder(run_dir: Path, dist_info: DistInfo):
    """Rank 0 holds the run folder's lock for the run's lifetime; every rank learns whether it got it (a second
    run in the same folder stops at once, naming the holder, before anything is written)."""
    lock = RunLock(run_dir, "run folder")
    error = None
    if dist_info.rank == 0:
        try:
            lock.__enter__()
        except LockError as exc:
            error = str(exc)
    error = gather_objects(error)[0] if dist_info.distributed else error
    if error:
        raise LockError(error)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _train(
    cfg: TrainConfig, run_dir: Path, dist_info: DistInfo, should_stop: Callable[[], int | bool], show_progress: bool
) -> Path:
    t_start = time.perf_counter()
    main = dist_info.rank == 0

    # -- data ---------------------------------------------------------------------------------------------------
    if not cfg.data.shards:
        raise TrainingError("data.shards is empty: point it at a training shard folder (holding manifest.json)")
    shards = open_shards(cfg.data.shards)
    samples = cfg.data.samples_per_epoch or shards.total
    bs = cfg.optim.batch_size_per_device = per_device_batch(cfg.optim, dist_info.world_size)
    cfg.data.num_workers = loader_workers(cfg.data)  # recorded in config.yaml as resolved
    iters = samples // (bs * dist_info.world_size)
    if iters == 0:
        raise TrainingError(
            f"{samples} samples per epoch give no full batch of {bs} x {dist_info.world_size} ranks; lower "
            "optim.batch_size_per_device or raise data.samples_per_epoch"
        )
    augment = build_augmentation(cfg)

    # -- student/teacher, loss, optimizer, schedules ------------------------------------------------------------
    tr = Trainer(cfg, run_dir, iters, dist_info)
    tr.data_identity = _shards_identity(shards)
    if main:
        total = bs * dist_info.world_size
        log.info(
            "batch %d = %d per process x %d processes; peak lr %.3g (optim.lr %g x %d / 256); %d steps per epoch",
            total,
            bs,
            dist_info.world_size,
            tr.lr.max(),
            cfg.optim.lr,
            total,
            iters,
        )

    # -- resume -------------------------------------------------------------------------------------------------
    latest = run_dir / "checkpoint.pth"
    if latest.exists():
        tr.load_state(load_checkpoint(latest), latest)
        log.info("resumed from %s at epoch %d, step %d", latest, tr.epoch, tr.global_step)
        if main:
            _truncate_log(run_dir / "log.jsonl", tr.global_step)
    elif cfg.run.continual_from:
        tr.load_continual(Path(cfg.run.continual_from))
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_train_config(cfg))

    writer = None
    if main and cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=tr.global_step)

    def checkpoint(keep_epoch: int | None = None) -> Path:  # a collective: every rank calls it at the same step
        rng_ranks = gather_objects(rng_state()) if dist_info.distributed else None
        error = None
        if main:
            state = tr.state(rng_ranks)
            try:
                save_checkpoint(latest, state)
                if keep_epoch is not None:
                    save_checkpoint(run_dir / f"checkpoint{keep_epoch:04d}.pth", state)
            except Exception as exc:  # every rank stops with rank 0's error instead of waiting for it
                if not dist_info.distributed:
                    raise
                error = exc
        if dist_info.distributed:
            failed = gather_objects(f"{type(error).__name__}: {error}" if error else None)[0]
            if error is not None:
                raise error
            if failed:
                raise TrainingError(f"rank 0 could not write the checkpoint ({failed}); stopped")
        return latest

    total_steps = cfg.optim.epochs * iters
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    bar = progress(total_steps, "pretrain", unit="step", initial=tr.global_step, enabled=main and show_progress)
    window: list[StepStats] = []
    t_window, wait_window = time.perf_counter(), 0.0

    # -- loop ---------------------------------------------------------------------------------------------------
    # One loader for the whole run; its workers persist across epochs and read where each epoch starts from
    # the shared cursor, so every epoch's stream is the same pure function of (seed, epoch, rank, worker).
    cursor = EpochCursor(tr.epoch, tr.it)
    pipe = train_pipeline(
        shards,
        augment,
        bs,
        rank=dist_info.rank,
        seed=cfg.run.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        cursor=cursor,
        verify=cfg.data.verify,
        on_bad_image=cfg.data.on_bad_image,
    )
    loader = make_loader(pipe, cfg.data.num_workers, persistent=True)
    stopped = False
    while tr.epoch < cfg.optim.epochs and tr.global_step < total_steps and not stopped:
        if tr.it >= iters:
            tr.epoch, tr.it = tr.epoch + 1, 0
            continue
        cursor.set(tr.epoch, tr.it)
        batches = iter(loader)
        while tr.it < iters and tr.global_step < total_steps:
            t0 = time.perf_counter()
            crops, _ = next(batches)
            wait_window += time.perf_counter() - t0
            stats = tr.step(augment.finish(crops, tr.device), int(should_stop()))
            window.append(stats)
            bar.update(1)
            if main and (
                tr.global_step % cfg.run.log_every_steps == 0 or tr.global_step == total_steps or tr.it == iters
            ):
                dt = time.perf_counter() - t_window
                record = _log_record(tr, window, len(window) * bs * dist_info.world_size / dt, wait_window)
                _append_jsonl(run_dir / "log.jsonl", record)
                if writer:
                    for k, v in record.items():
                        if isinstance(v, (int, float)) and v is not None and k not in ("epoch", "step"):
                            writer.add_scalar(f"train/{k}", v, tr.global_step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                window, t_window, wait_window = [], time.perf_counter(), 0.0
            every = cfg.run.checkpoint_every_steps
            if every and tr.global_step % every == 0 and tr.it < iters:
                checkpoint()
            if stats.stop:
                if hasattr(should_stop, "agree"):
                    should_stop.agree(stats.stop)
                stopped = True
                break
        del batches
        if tr.it >= iters:  # epoch finished: the checkpoint records the start of the next one
            tr.epoch, tr.it = tr.epoch + 1, 0
            keep = cfg.run.keep_every_epochs
            kept = (keep and tr.epoch % keep == 0) or tr.epoch in cfg.run.keep_epochs
            checkpoint(tr.epoch if kept else None)  # named by epochs completed
    bar.close()
    del loader  # its workers end here
    path = checkpoint()
    if writer:
        writer.close()
    if stopped:
        return path
    # every rank's student + teacher must be bit-identical (gradients averaged, the same EMA): check, record
    if dist_info.distributed and tr.student.backbone.features.uses_batch_norm and tr.device.type != "cuda":
        for net in (tr.student, tr.teacher):  # per-rank BatchNorm statistics without SyncBatchNorm
            broadcast_batch_norm_buffers(net)
    ranks = rank_fingerprints(tr.student, tr.teacher)
    if len({r["fingerprint"] for r in ranks}) > 1:
        raise TrainingError(f"the ranks' weights diverged ({ranks}); the checkpoint holds rank 0's")
    if main:
        save_checkpoint(run_dir / "final.pth", tr.state())
        atomic_write_json(
            run_dir / "done.json",
            {
                "epochs": tr.epoch,
                "global_step": tr.global_step,
                "arch": cfg.model.arch,
                "region_loss_weight": cfg.loss.region_loss_weight,
                "wall_s": round(time.perf_counter() - t_start, 1),
                "world_size": dist_info.world_size,
                "ranks": ranks,
            },
        )
        return run_dir / "final.pth"
    return path


def _shards_identity(shards) -> str:
    """What a run trains on, independent of where the shards lie: the datasets, splits and sample count, and a
    hash of the shards' sha256 from the manifests."""
    import hashlib

    h = hashlib.sha256("".join(s.get("sha256", "") for s in shards.manifest["shards"]).encode()).hexdigest()[:12]
    name = shards.manifest.get("dataset", "mix") + "/" + str(shards.manifest.get("split", ""))
    return f"{name} {shards.total} samples {h}"


def collapse_signal(record: dict, log_k: float) -> str | None:
    """What a log record says of a collapse, or None. After the first epoch (at the start a random teacher is
    near uniform by construction): the teacher's output entropy within 5 % of log K (uniform outputs), or under
    1 % of it (every image on one prototype); from the third epoch, the loss within 1 % of log K (what a student
    matching a uniform teacher scores: nothing learnt)."""
    epoch = record.get("epoch", 0)
    if epoch < 1:
        return None
    h = record.get("teacher_entropy")
    if h is not None and h > 0.95 * log_k:
        return f"teacher entropy {h:.2f} near log K = {log_k:.2f} (uniform outputs)"
    if h is not None and h < 0.01 * log_k:
        return f"teacher entropy {h:.3f} near 0 (every image on one prototype)"
    loss = record.get("loss")
    if epoch >= 2 and loss is not None and abs(loss - log_k) < 0.01 * log_k:
        return f"loss {loss:.3f} near log K = {log_k:.2f} (nothing learnt)"
    return None


def _log_record(tr: Trainer, window: list[StepStats], img_s: float, wait: float) -> dict:
    g = tr.global_step - 1
    regions = [s.region for s in window if s.region is not None]
    entropies = [s.teacher_entropy for s in window if s.teacher_entropy is not None]
    log_k = math.log(tr.loss.center.shape[-1])
    record = {
        "epoch": tr.epoch,
        "step": tr.global_step,
        "loss": sum(s.loss for s in window) / len(window),
        "loss_view": sum(s.view for s in window) / len(window),
        "loss_region": sum(regions) / len(regions) if regions else None,
        "lr": float(tr.lr[g]),
        "wd": float(tr.wd[g]),
        "momentum": float(tr.momentum[g]),
        "teacher_temp": tr.loss.teacher_temp(tr.epoch),
        "img_s": round(img_s, 2),
        "data_wait_s": round(wait, 3),
        "teacher_entropy": sum(entropies) / len(entropies) if entropies else None,
        "log_k": round(log_k, 4),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "time_s": round(time.time(), 3),  # the same instant, to the millisecond (ETAs of fast steps)
    }
    record["collapse"] = collapse_signal(record, log_k)
    if record["collapse"]:
        log.warning("step %d: collapse suspected: %s", tr.global_step, record["collapse"])
    return record


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from (a killed run may have logged past it)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
