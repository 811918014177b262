#!/usr/bin/env python
"""Time ONE TRAINING STEP of the official microsoft/esvit code (main_esvit.py, Swin-T W=7, V+R) on CPU.

Counterpart of the project's ``esvit bench train``: same crops (2 global + N local, torch.randn from a
Generator seeded 0), 2 warm-up steps, then --steps timed steps, then one more step for its memory (the
allocator-level peak above the step's start, as ``esvit bench train`` reports it); prints ONE JSON line on
stdout (everything else, including what the official code prints, goes to stderr). --reuse-memory applies the
glibc settings this project's training applies (run.reuse_memory, on by default in ``esvit bench train``).

Needs a checkout of https://github.com/microsoft/esvit (--official) and its two extra dependencies, yacs and
einops (``pip install yacs einops``, or a folder holding them: --pydeps). Run from this repository's root:

    python benchmarks/official_step.py --official ../esvit --batch 4 --precision fp32

Everything that does the work is imported from the official checkout (--official), nothing is copied:
  models.build_model (+ config/update_config on experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml),
  models.vision_transformer.DINOHead, main_esvit.get_args_parser / DDINOLoss (DINOLoss with --region-weight 0
  is not offered: the official V+R recipe is timed), utils.get_params_groups / clip_gradients /
  cancel_gradients_last_layer / cosine_scheduler / fix_random_seeds.
The step (``official_step`` below) is main_esvit.train_one_epoch's loop body, statement for statement, with
these differences (all forced by CPU / single process):
  * no DistributedDataParallel around the student (single process; EMA iterates ``student.parameters()``
    where the official code has ``student.module.parameters()``);
  * the official fp32 branch calls ``utils.clip_gradients(model, ...)`` - ``model`` is an undefined name there
    (a NameError in the official code); we pass ``student`` as its fp16 branch does;
  * ``torch.cuda.amp.autocast(fp16)`` -> ``torch.autocast("cpu", bfloat16)`` for --precision bf16 (no
    GradScaler, which bf16 does not need: the official no-scaler branch is used), disabled for fp32;
  * ``.cuda()`` / ``torch.cuda.synchronize()`` dropped; MetricLogger logging dropped (``loss.item()`` is kept:
    the official isfinite check does it every step).
DDINOLoss.update_center calls dist.all_reduce: a 1-process gloo group is initialised so it runs unchanged.
Schedules as in the project's bench (optim.epochs=1, warmup 0, 1000 iterations per epoch, freeze_last_layer 0):
lr = cosine(args.lr * batch / 256 -> min_lr), wd = cosine(0.04 -> 0.4), EMA momentum = cosine(0.996 -> 1),
teacher temperature schedule of the README Swin-T command (0.04 -> 0.07 over 30 of 300 epochs), at epoch 0.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import json
import math
import os
import resource
import socket
import sys
import time
import types
import warnings


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="checkout of microsoft/esvit")
    p.add_argument("--pydeps", default=None, help="folder holding yacs and einops, if they are not installed")
    p.add_argument(
        "--reuse-memory",
        action="store_true",
        help="glibc keeps freed memory for reuse, as this project's training does",
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps, after 2 warm-up steps (default %(default)s)")
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--locals", type=int, default=6)
    p.add_argument(
        "--cfg",
        default="experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml",
        help="official yaml, relative to --official (default %(default)s)",
    )
    return p.parse_args()


def shims(official: str, pydeps: str) -> None:
    """Runtime compatibility shims for torch 2.x / timm 1.x (modules and names the official code imports that these
    versions no longer have); no source edits."""
    warnings.filterwarnings("ignore")
    if pydeps:
        sys.path.insert(0, os.path.abspath(pydeps))
    sys.path.insert(0, os.path.abspath(official))
    import torch  # noqa: F401

    if "torch._six" not in sys.modules:
        m = types.ModuleType("torch._six")
        m.container_abcs = collections.abc
        m.string_classes = (str, bytes)
        m.int_classes = int
        m.inf = float("inf")
        sys.modules["torch._six"] = m
    import timm.data.transforms as _tdt

    if not hasattr(_tdt, "_pil_interp"):
        from timm.data.transforms import str_to_pil_interp

        _tdt._pil_interp = str_to_pil_interp


def main() -> None:
    a = parse()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the official code prints; stdout carries only the JSON line
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this repository: esvit
    if a.reuse_memory:
        from esvit.train.memory import keep_freed_memory

        keep_freed_memory()
    from esvit.bench.train import allocator_peak_gb

    shims(a.official, a.pydeps)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(a.threads)

    # 1-process gloo group: DDINOLoss.update_center's dist.all_reduce / get_world_size run unchanged
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend="gloo", rank=0, world_size=1)

    import utils  # official utils.py
    from config import config, update_config
    from main_esvit import DDINOLoss, get_args_parser
    from models import build_model
    from models.vision_transformer import DINOHead

    # official args: the README Swin-T V+R command, with this bench's sizes
    cfg = a.cfg if os.path.isabs(a.cfg) else os.path.join(os.path.abspath(a.official), a.cfg)
    parser = argparse.ArgumentParser("EsViT", parents=[get_args_parser()])
    args = parser.parse_args(
        [
            "--arch",
            "swin_tiny",
            "--batch_size_per_gpu",
            str(a.batch),
            "--epochs",
            "300",
            "--teacher_temp",
            "0.07",
            "--warmup_epochs",
            "10",
            "--warmup_teacher_temp_epochs",
            "30",
            "--norm_last_layer",
            "false",
            "--use_dense_prediction",
            "True",
            "--cfg",
            cfg,
            "--out_dim",
            str(a.out_dim),
            "--local_crops_number",
            str(a.locals),
            "--local_crops_size",
            str(a.local_size),
            "--use_fp16",
            "false",
            "--freeze_last_layer",
            "0",
        ]
    )
    args.rank = 0
    assert args.clip_grad == 3.0 and args.momentum_teacher == 0.996 and args.optimizer == "adamw"
    utils.fix_random_seeds(args.seed)

    # ---- main_esvit.train_esvit, swin branch: networks, loss, optimizer ----
    update_config(config, args)
    assert config.MODEL.SPEC.WINDOW_SIZE == 7 and list(config.MODEL.SPEC.DEPTHS) == [2, 2, 6, 2]
    student = build_model(config, use_dense_prediction=args.use_dense_prediction)
    teacher = build_model(config, is_teacher=True, use_dense_prediction=args.use_dense_prediction)
    student.head = DINOHead(
        student.num_features, args.out_dim, use_bn=args.use_bn_in_head, norm_last_layer=args.norm_last_layer
    )
    teacher.head = DINOHead(teacher.num_features, args.out_dim, args.use_bn_in_head)
    if args.use_dense_prediction:
        student.head_dense = DINOHead(
            student.num_features, args.out_dim, use_bn=args.use_bn_in_head, norm_last_layer=args.norm_last_layer
        )
        teacher.head_dense = DINOHead(teacher.num_features, args.out_dim, args.use_bn_in_head)
    assert not utils.has_batchnorms(student)
    teacher_without_ddp = teacher
    teacher_without_ddp.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    ncrops = sum(args.local_crops_number) + 2
    dino_loss = DDINOLoss(
        args.out_dim, ncrops, args.warmup_teacher_temp, args.teacher_temp, args.warmup_teacher_temp_epochs, args.epochs
    )
    params_groups = utils.get_params_groups(student)
    optimizer = torch.optim.AdamW(params_groups)
    iters = 1000  # as the project's bench: optim.epochs=1, warmup 0, iters_per_epoch=1000
    lr_schedule = utils.cosine_scheduler(
        args.lr * (args.batch_size_per_gpu * utils.get_world_size()) / 256.0, args.min_lr, 1, iters, warmup_epochs=0
    )
    wd_schedule = utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, 1, iters)
    momentum_schedule = utils.cosine_scheduler(args.momentum_teacher, 1, 1, iters)
    epoch = 0
    student.train()
    teacher.train()  # the official code never calls .eval() on the teacher (no dropout/BN; drop_path 0)

    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
    )
    check: dict = {}

    # ---- main_esvit.train_one_epoch, loop body (mixup_fn None, fp16_scaler None) ----
    def official_step(it: int, images: list) -> float:
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = lr_schedule[it]
            if i == 0:
                param_group["weight_decay"] = wd_schedule[it]
        teacher_input = images[:2]
        student_input = images
        targets_mixup = None
        with autocast():
            teacher_output = teacher(teacher_input)
            student_output = student(student_input)
            loss = dino_loss(student_output, teacher_output, epoch, targets_mixup)
        if not math.isfinite(loss.item()):
            raise SystemExit(f"Loss is {loss.item()}, stopping training")
        optimizer.zero_grad()
        loss.backward()
        if args.clip_grad:
            utils.clip_gradients(student, args.clip_grad)  # official fp32 branch: `model` (undefined name)
        utils.cancel_gradients_last_layer(epoch, student, args.freeze_last_layer)
        if not check:  # first warm-up step only: do gradients reach the student?
            named = list(student.named_parameters())
            check["params"] = len(named)
            check["with_grad"] = sum(p.grad is not None for _, p in named)
            check["nonzero_grad"] = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in named)
            check["no_grad"] = [n for n, p in named if p.grad is None][:10]
            check["finite_grads"] = all(bool(torch.isfinite(p.grad).all()) for _, p in named if p.grad is not None)
        optimizer.step()
        with torch.no_grad():
            m = momentum_schedule[it]
            for param_q, param_k in zip(student.parameters(), teacher_without_ddp.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        return loss.item()

    gen = torch.Generator().manual_seed(0)  # the project's bench make_crops
    crops = [torch.randn(a.batch, 3, a.global_size, a.global_size, generator=gen) for _ in range(2)]
    crops += [torch.randn(a.batch, 3, a.local_size, a.local_size, generator=gen) for _ in range(a.locals)]

    it = 0
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()} if a.steps <= 1 else None
    losses = []
    for _ in range(2):  # warm-up
        losses.append(official_step(it, crops))
        it += 1
    t0 = time.perf_counter()
    for _ in range(a.steps):
        losses.append(official_step(it, crops))
        it += 1
    dt = (time.perf_counter() - t0) / max(a.steps, 1)
    step_peak = allocator_peak_gb(lambda: official_step(it, crops))
    print(
        f"[official_step] losses={[round(x, 4) for x in losses]} grad_check={check} "
        f"center|sum|={float(dino_loss.center.abs().sum()):.4g} "
        f"center_grid|sum|={float(dino_loss.center_grid.abs().sum()):.4g}"
        f" student_params={sum(p.numel() for p in student.parameters())}",
        file=sys.stderr,
    )
    if t_before is not None:
        changed = sum(not torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
        print(f"[official_step] teacher tensors changed by EMA: {changed}/{len(t_before)}", file=sys.stderr)
    dist.destroy_process_group()
    out = {
        "impl": "official",
        "arch": "swin_tiny_w7",
        "batch": a.batch,
        "precision": a.precision,
        "threads": a.threads,
        "crops": f"2x{a.global_size}+{a.locals}x{a.local_size}",
        "out_dim": a.out_dim,
        "reuse_memory": a.reuse_memory,
        "step_s": round(dt, 3),
        "img_s": round(a.batch / dt, 3),
        "step_peak_gb": round(step_peak, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
    print(json.dumps(out), file=real_stdout, flush=True)


if __name__ == "__main__":
    main()
