"""``esvit bench train``: one EsViT training step - images/s, GFLOP/s, fraction of a matmul peak, memory."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from esvit.bench import benchmark


# ----------------------------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="swin_tiny_w7", help="backbone (default %(default)s)")
    p.add_argument("--batch", default="4", help="images per step (default %(default)s); auto: the largest of --max-batch, "
                   "--max-batch / 2, ... whose steps fit in the device's memory")
    p.add_argument("--max-batch", type=int, default=512, help="upper end of --batch auto (default %(default)s)")
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--locals", type=int, default=6, help="local crops (default %(default)s)")
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--region-weight", type=float, default=0.5, help="0 = view loss only (DINO)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--swin-block", default="official", choices=["official", "timm"],
                   help="official: the EsViT block order (pad, then shift; the default everywhere); timm: timm's own "
                   "shift-then-pad block, to measure what the official order costs (default %(default)s)")
    p.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (run.deterministic): measure their cost")
    p.add_argument("--no-reuse-memory", action="store_true", help="leave glibc's malloc settings alone (run.reuse_memory=false)")


def matmul_peak(device: str, dtype: Any, n: int = 2048, repeats: int = 10) -> float:
    """Achieved GFLOP/s of an n x n x n matrix product (the best of ``repeats``): the peak to compare with."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def largest_batch(fits, max_batch: int, release=lambda: None) -> int:
    """The largest of ``max_batch, max_batch // 2, ..., 1`` for which ``fits(batch)`` runs without running out of
    memory (``torch.OutOfMemoryError``; ``release()`` after each failure)."""
    import torch

    batch = max_batch
    while True:
        try:
            fits(batch)
            return batch
        except torch.OutOfMemoryError:
            release()
            if batch == 1:
                raise SystemExit("bench train: even batch 1 does not fit in the device's memory") from None
            batch //= 2


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


@benchmark("train", _train_args)
def bench_train(args: argparse.Namespace) -> dict:
    """EsViT training step (student fwd+bwd, teacher fwd, loss, AdamW, EMA): img/s, GFLOP/s, % of matmul peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from esvit.train.config import load_train_config
    from esvit.train.loop import Trainer

    torch.set_num_threads(args.threads)
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) > 0):
        raise SystemExit(f"bench train: --batch must be a positive integer or auto (got {args.batch!r})")
    cfg = load_train_config(None, [  # with --batch auto the batch in the config only scales the (unused) lr
        f"model.arch={args.arch}", f"model.out_dim={args.out_dim}", f"loss.region_loss_weight={args.region_weight}",
        f"optim.batch_size_per_device={1 if args.batch == 'auto' else args.batch}", f"crops.global_size={args.global_size}",
        f"crops.local_size=[{args.local_size}]", f"crops.local_number=[{args.locals}]", f"run.precision={args.precision}",
        f"run.device={args.device}", f"run.threads={args.threads}", "optim.warmup_epochs=0", "optim.epochs=1",
        "optim.freeze_last_layer=0", f"run.reuse_memory={not args.no_reuse_memory}", f"run.deterministic={args.deterministic}",
    ])  # fmt: skip
    tr = Trainer(cfg, Path(tempfile.gettempdir()), iters_per_epoch=1000)
    if args.swin_block == "timm":
        from timm.models.swin_transformer import SwinTransformerBlock

        for net in (tr.student, tr.teacher):
            for m in net.modules():
                if isinstance(m, SwinTransformerBlock):
                    m.__class__ = SwinTransformerBlock
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def make_crops(batch: int) -> list:
        gen = torch.Generator().manual_seed(0)
        crops = [torch.randn(batch, 3, args.global_size, args.global_size, generator=gen) for _ in range(2)]
        return crops + [torch.randn(batch, 3, args.local_size, args.local_size, generator=gen) for _ in range(args.locals)]

    if args.batch == "auto":

        def fits(batch: int) -> None:
            tr.step(make_crops(batch))
            tr.step(make_crops(batch))  # the second step holds the optimizer state too

        def release() -> None:
            tr.optimizer.zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()

        batch = largest_batch(fits, args.max_batch, release)
    else:
        batch = int(args.batch)
    crops = make_crops(batch)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with FlopCounterMode(display=False) as counter:
        tr.step(crops)  # warm-up step 1, counted
    flops = counter.get_total_flops()
    tr.step(crops)  # warm-up step 2
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.step(crops)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    peak = matmul_peak(args.device, dtype, n=2048 if args.device == "cpu" else 8192)
    achieved = flops / dt / 1e9
    return {
        "arch": args.arch, "batch": batch, "crops": f"2x{args.global_size}+{args.locals}x{args.local_size}",
        "out_dim": args.out_dim, "region_weight": args.region_weight, "precision": args.precision, "device": args.device,
        "threads": args.threads, "swin_block": args.swin_block, "deterministic": args.deterministic, "reuse_memory": not args.no_reuse_memory, "step_s": round(dt, 3), "img_s": round(batch / dt, 3),
        "gflop_per_step": round(flops / 1e9, 1), "gflop_s": round(achieved, 1), "matmul_peak_gflop_s": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3), "peak_rss_gb": round(_peak_rss_gb(), 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if args.device == "cuda" else None,
    }  # fmt: skip


