"""``esvit bench probe|extract|infer``: the evaluation side and the paper's throughput column."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from esvit.bench.registry import benchmark

# ----------------------------------------------------------------------------------------------- probe


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=50000, help="training samples (default %(default)s)")
    p.add_argument(
        "--dim", type=int, default=768, help="feature dimension (default %(default)s: Swin-T's pooled feature)"
    )
    p.add_argument("--classes", type=int, default=100, help="classes (default %(default)s)")
    p.add_argument("--n-test", type=int, default=10000, help="test samples (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument(
        "--separation",
        type=float,
        default=0.15,
        help="class-centre scale (default %(default)s: ~85 %% test accuracy at 768 dims, 100 classes)",
    )
    p.add_argument("--sklearn-max-iter", type=int, default=1000, help="as CLIP's probe (default %(default)s)")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where our probe runs (scikit-learn: the CPU)"
    )


@benchmark("probe", _probe_args)
def bench_probe(args: argparse.Namespace) -> dict:
    """The transfer probe's lambda search + refit vs scikit-learn's L-BFGS LogisticRegression, same search."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from esvit.data.sources import stratified_split
    from esvit.eval.probe import LAMBDA_GRID, lambda_search, run_probe, standardize

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench probe: --device cuda but no CUDA device is visible")
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy / scikit-learn's BLAS and OpenMP: the same threads as torch
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes, args.dim)) * args.separation
    y = rng.integers(0, args.classes, args.n + args.n_test)
    x = (centers[y] + rng.normal(size=(len(y), args.dim))).astype(np.float32)
    train_x, train_y = torch.from_numpy(x[: args.n]), torch.from_numpy(y[: args.n])
    test_x, test_y = torch.from_numpy(x[args.n :]), torch.from_numpy(y[args.n :])

    t0 = time.perf_counter()
    ours = run_probe(train_x, train_y, test_x, test_y, device=args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    parts = stratified_split(y[: args.n], 0.2, 0)
    fx, vx = standardize(train_x[parts["train"]], train_x[parts["test"]])
    fy, vy = y[: args.n][parts["train"]], y[: args.n][parts["test"]]
    fits = {"n": 0}

    def evaluate(i: int) -> float:
        fits["n"] += 1
        m = LogisticRegression(C=1 / LAMBDA_GRID[i], max_iter=args.sklearn_max_iter).fit(fx.numpy(), fy)
        return 100 * float((m.predict(vx.numpy()) == vy).mean())

    best, _ = lambda_search(evaluate)
    ax, tx = standardize(torch.cat([train_x[parts["train"]], train_x[parts["test"]]]), test_x)
    ay = np.concatenate([fy, vy])
    ref = LogisticRegression(C=1 / LAMBDA_GRID[best], max_iter=args.sklearn_max_iter).fit(ax.numpy(), ay)
    ref_acc = 100 * float((ref.predict(tx.numpy()) == y[args.n :]).mean())
    t_ref = time.perf_counter() - t0
    return {
        "n": args.n,
        "dim": args.dim,
        "classes": args.classes,
        "threads": args.threads,
        "device": args.device,
        "ours_s": round(t_ours, 1),
        "sklearn_s": round(t_ref, 1),
        "speedup": round(t_ref / t_ours, 2),
        "ours_acc": round(ours.value, 2),
        "sklearn_acc": round(ref_acc, 2),
        "ours_lambda": ours.best_lambda,
        "sklearn_lambda": float(LAMBDA_GRID[best]),
        "fits": fits["n"] + 1,
    }


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archs",
        default="swin_pico:32,swin_tiny_w7:224",
        help="arch:image_size list (default %(default)s: a CPU-sized Swin, Swin-T)",
    )
    p.add_argument("--batch", type=int, default=64, help="images per batch (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the network runs (default %(default)s)"
    )


@benchmark("extract", _extract_args)
def bench_extract(args: argparse.Namespace) -> dict:
    """``esvit extract`` end to end (shards -> decode -> eval transform -> pooled + last-4-blocks), images/s."""
    import torch

    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from esvit.eval.features import extract, load_backbone

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"batch": args.batch, "workers": args.workers, "threads": args.threads, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        src = get_source("digits")  # 1,438 real images; the eval transform resizes them to each model's input size
        write_shards(src, "digits", "train", Path(tmp) / "shards", ShardConfig(workers=1), progress=False)
        for spec in args.archs.split(","):
            arch, size = spec.split(":")
            net, meta = load_backbone(None, arch)
            t0 = time.perf_counter()
            res = extract(
                net,
                Path(tmp) / "shards",
                Path(tmp) / f"{arch}.pt",
                meta,
                image_size=int(size),
                batch_size=args.batch,
                num_workers=args.workers,
                device=args.device,
                show_progress=False,
            )
            dt = time.perf_counter() - t0
            out[f"{arch}@{size}_img_s"] = round(len(res["keys"]) / dt, 1)
            out[f"{arch}@{size}_images"] = len(res["keys"])
    return out


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", default="swin_tiny_w7", help="comma-separated backbones (default %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="images per forward (the paper's Table 1: 128)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed batches after one warm-up batch")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32, or autocast to bf16 / fp16 (default %(default)s)",
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the network runs (default %(default)s)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")


@benchmark("infer", _infer_args)
def bench_infer(args: argparse.Namespace) -> dict:
    """Backbone inference images/s as the paper's Table 1 measures it (batch 128, 224 px, one device)."""
    import torch

    from esvit.models import Backbone

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench infer: --device cuda but no CUDA device is visible")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    out: dict[str, Any] = {
        "batch": args.batch,
        "size": args.size,
        "precision": args.precision,
        "device": args.device,
        "img_s": {},
    }
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    for arch in args.archs.split(","):
        net = Backbone(arch).eval().to(args.device)
        times = []
        with (
            torch.inference_mode(),
            torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            for i in range(args.steps + 1):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                net(x)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first batch warms up
                    times.append(time.perf_counter() - t0)
        out["img_s"][arch] = round(args.batch / (sum(times) / len(times)), 1)
        del net
    return out
