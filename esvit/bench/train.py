"""``esvit bench train``: one EsViT training step - images/s, GFLOP/s, fraction of a matmul peak, memory."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from esvit.bench.registry import benchmark

# ----------------------------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="swin_tiny_w7", help="backbone (default %(default)s)")
    p.add_argument(
        "--batch",
        default="4",
        help="images per step (default %(default)s); auto: the largest of --max-batch, "
        "--max-batch / 2, ... whose steps fit in the device's memory",
    )
    p.add_argument("--max-batch", type=int, default=512, help="upper end of --batch auto (default %(default)s)")
    p.add_argument("--global-size", type=int, default=224, help="side of the 2 global crops (default %(default)s)")
    p.add_argument("--local-size", type=int, default=96, help="side of the local crops (default %(default)s)")
    p.add_argument("--locals", type=int, default=6, help="local crops (default %(default)s)")
    p.add_argument("--out-dim", type=int, default=65536, help="prototypes K of both heads (default %(default)s)")
    p.add_argument("--region-weight", type=float, default=0.5, help="0 = view loss only (DINO)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="run.precision: fp32, or the networks under bf16 / fp16 autocast (default %(default)s)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="run.device (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument(
        "--swin-block",
        default="official",
        choices=["official", "timm"],
        help="official: the EsViT block order (pad, then shift; the default everywhere); timm: timm's own "
        "shift-then-pad block, to measure what the official order costs (default %(default)s)",
    )
    p.add_argument(
        "--deterministic", action="store_true", help="deterministic GPU kernels (run.deterministic): measure their cost"
    )
    p.add_argument(
        "--no-reuse-memory", action="store_true", help="leave glibc's malloc settings alone (run.reuse_memory=false)"
    )
    p.add_argument(
        "--no-chunked-heads",
        action="store_true",
        help="the heads' last layers as whole [tokens, K] logits (run.chunked_heads=false), to compare",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=None, help="rows per chunk of the chunked heads (run.head_chunk_rows)"
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the parts of the step (backbone / heads / loss forward and backward, optimizer, EMA) "
        "over 2 more steps, synchronising between parts",
    )


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


def _rss_gb() -> float:
    """Resident memory now (Linux; the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _peak_rss_gb()
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def step_memory(tr, crops: list, device: str) -> float:
    """GB: the most memory the tensors allocated during one more step held at once, above what was allocated when
    it began (the model, the optimizer state, the batch): the allocator's own count, so neither the process's other
    memory nor the allocator's cache blurs the comparison of two ways to run a step. On GPUs from
    ``torch.cuda.max_memory_allocated``; on CPU from the profiler's record of every allocation and free."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        tr.step(crops)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 1e9
    return allocator_peak_gb(lambda: tr.step(crops))


def allocator_peak_gb(fn) -> float:
    """GB: the most memory the CPU tensors allocated while ``fn()`` runs held at once, above the start: the
    profiler's allocation and free records ("[memory]" events, with their sizes) replayed in time order."""
    import os

    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's GPU probe would log an error on CPU machines
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    now = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        now += event.nbytes()
        peak = max(peak, now)
    return peak / 1e9


def step_breakdown(tr, crops: list, sync, steps: int = 2) -> dict[str, float]:
    """Seconds per part of a training step (the mean of ``steps`` steps), from the trainer's phase marks and
    hooks on the student's backbone: the backbone's forward (its calls), the heads' forward (the rest of the
    student forward), the loss (with chunked heads it also forms the heads' last-layer gradients), the heads'
    backward (until the backbone's outputs have their gradients), the backbone's backward, the optimizer
    (clipping, AdamW) and the teacher's EMA; ``teacher`` is its whole forward, ``other`` the ranks' agreement."""
    import torch

    backbone = tr.student.backbone
    times: dict[str, float] = {}
    state: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        times[name] = times.get(name, 0.0) + seconds

    def now() -> float:
        sync()
        return time.perf_counter()

    def pre(_m, _inp):
        state["fwd"] = now()

    def grad_arrived(grad):
        # a hook runs as autograd is about to go into the backbone through this output: the first one marks the
        # end of the heads' backward
        state["grads_at"] = min(state["grads_at"], now())
        return grad

    def post(_m, _inp, out):
        add("backbone_forward", now() - state["fwd"])
        for t in out:
            if torch.is_tensor(t) and t.requires_grad:
                t.register_hook(grad_arrived)

    def mark(name: str) -> None:
        t = now()
        seconds = t - state["last"]
        if name == "student":
            add("heads_forward", seconds - (times.get("backbone_forward", 0.0) - state["backbone_before"]))
        elif name == "backward":
            add("heads_loss_backward", state["grads_at"] - state["last"])
            add("backbone_backward", t - state["grads_at"])
        else:
            add({"agree": "other"}.get(name, name), seconds)
        state["last"] = now()

    handles = [backbone.register_forward_pre_hook(pre), backbone.register_forward_hook(post)]
    tr.mark_phase = mark
    try:
        for _ in range(steps):
            state.update(last=now(), backbone_before=times.get("backbone_forward", 0.0), grads_at=float("inf"))
            tr.step(crops)
    finally:
        tr.mark_phase = None
        for h in handles:
            h.remove()
    return {k: round(v / steps, 3) for k, v in times.items()}


@benchmark("train", _train_args)
def bench_train(args: argparse.Namespace) -> dict:
    """EsViT training step (student fwd+bwd, teacher fwd, loss, AdamW, EMA): img/s, GFLOP/s, % of matmul peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from esvit.losses.chunked import default_chunk_rows
    from esvit.train.config import load_train_config
    from esvit.train.loop import Trainer

    torch.set_num_threads(args.threads)
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) > 0):
        raise SystemExit(f"bench train: --batch must be a positive integer or auto (got {args.batch!r})")
    cfg = load_train_config(
        None,
        [  # with --batch auto the batch in the config only scales the (unused) lr
            f"model.arch={args.arch}",
            f"model.out_dim={args.out_dim}",
            f"loss.region_loss_weight={args.region_weight}",
            f"optim.batch_size_per_device={1 if args.batch == 'auto' else args.batch}",
            f"crops.global_size={args.global_size}",
            f"crops.local_size=[{args.local_size}]",
            f"crops.local_number=[{args.locals}]",
            f"run.precision={args.precision}",
            f"run.device={args.device}",
            f"run.threads={args.threads}",
            "optim.warmup_epochs=0",
            "optim.epochs=1",
            "optim.freeze_last_layer=0",
            f"run.reuse_memory={not args.no_reuse_memory}",
            f"run.deterministic={args.deterministic}",
            f"run.chunked_heads={not args.no_chunked_heads}",
        ]
        + ([f"run.head_chunk_rows={args.chunk_rows}"] if args.chunk_rows else []),
    )
    tr = Trainer(cfg, Path(tempfile.gettempdir()), iters_per_epoch=1000)
    rss_before = _rss_gb()
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
        return crops + [
            torch.randn(batch, 3, args.local_size, args.local_size, generator=gen) for _ in range(args.locals)
        ]

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
    parts = step_breakdown(tr, crops, sync) if args.breakdown else None
    peak_gpu = (
        torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else None
    )  # before the memory step resets it
    step_gb = step_memory(tr, crops, args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    peak = matmul_peak(args.device, dtype, n=2048 if args.device == "cpu" else 8192)
    achieved = flops / dt / 1e9
    return {
        "arch": args.arch,
        "batch": batch,
        "crops": f"2x{args.global_size}+{args.locals}x{args.local_size}",
        "out_dim": args.out_dim,
        "region_weight": args.region_weight,
        "precision": args.precision,
        "device": args.device,
        "threads": args.threads,
        "swin_block": args.swin_block,
        "deterministic": args.deterministic,
        "reuse_memory": not args.no_reuse_memory,
        "chunked_heads": not args.no_chunked_heads,
        "chunk_rows": None
        if args.no_chunked_heads
        else tr.loss.chunk_rows or default_chunk_rows(args.out_dim, args.device),
        "step_s": round(dt, 3),
        "img_s": round(batch / dt, 3),
        "gflop_per_step": round(flops / 1e9, 1),
        "gflop_s": round(achieved, 1),
        "matmul_peak_gflop_s": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "rss_before_steps_gb": round(rss_before, 2),
        "step_peak_gb": round(step_gb, 3),
        "peak_gpu_gb": round(peak_gpu, 2) if peak_gpu is not None else None,
        **({"parts_s": parts} if parts else {}),
    }
