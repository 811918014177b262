"""``esvit bench``: every throughput figure the project quotes, measured by one command.

Each benchmark compares side by side in one run on one machine and prints one JSON line (also appended to
``results/bench/<name>.jsonl``) that describes the machine, so a ratio is never a number from two machines.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["add_arguments", "run", "machine", "BENCHES"]

BENCHES: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {}


def benchmark(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(fn: Callable[[argparse.Namespace], dict]):
        BENCHES[name] = (configure, fn)
        return fn

    return register


def machine() -> dict[str, Any]:
    """CPU model, core count, threads, library versions, device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    return info


def _emit(name: str, record: dict, out_dir: Path) -> None:
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record, "machine": machine()}
    line = json.dumps(record)
    print(line, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")


# ----------------------------------------------------------------------------------------------- shard


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=20000, help="JPEG files to shard (default %(default)s)")
    p.add_argument("--kb", type=float, default=110, help="target JPEG size in KB, ImageNet's mean (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="esvit shard worker processes (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each; best is kept")
    p.add_argument("--workdir", help="folder for the images and outputs (default: a temp dir, removed after)")
    p.add_argument("--fashion-root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST .gz files")


def _make_jpeg(args: tuple[np.ndarray, int, float]) -> bytes:
    """An ImageNet-sized JPEG made from a real demo image: upscaled, tinted, with sensor-like noise."""
    from PIL import Image

    img, seed, noise = args
    rng = np.random.default_rng(seed)
    side = 448
    base = np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC), dtype=np.float32)
    tint = rng.uniform(0.5, 1.0, size=3)
    rgb = base[..., None] * tint + rng.normal(0, noise, size=(side, side, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_jpeg_folder(root: Path, n: int, kb: float, fashion_root: str, unique: int = 1000) -> float:
    """Write ``n`` real JPEGs (``unique`` distinct ones, the rest copies) as ``root/train/<class>/<i>.jpg``.

    Returns:
        The mean file size in KB.
    """
    from esvit.data.sources import FashionMNISTSource

    src = FashionMNISTSource(fashion_root, cache_dir=str(root.parent / "fashion_raw"))
    images, labels = src._cached()["train"]
    unique = min(unique, n)
    # Pick the noise level that gives the target size on a few samples.
    noise = 8.0
    for _ in range(6):
        size = np.mean([len(_make_jpeg((images[i], i, noise))) for i in range(8)]) / 1e3
        noise *= (kb / size) ** 1.2
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        blobs = pool.map(_make_jpeg, [(images[i], i, noise) for i in range(unique)], chunksize=16)
    sizes = []
    for i in range(n):
        label = int(labels[i % unique])
        d = root / "train" / f"class{label:02d}"
        d.mkdir(parents=True, exist_ok=True)
        data = blobs[i % unique]
        (d / f"img{i:07d}.jpg").write_bytes(data)
        sizes.append(len(data))
    return float(np.mean(sizes) / 1e3)


def _read_all(root: Path) -> None:
    for p in root.rglob("*.jpg"):
        p.read_bytes()


@benchmark("shard", _shard_args)
def bench_shard(args: argparse.Namespace) -> dict:
    """``esvit shard`` vs ``tar cf`` on the same JPEG files, alternating, best of ``repeats`` each."""
    from esvit.data.shards import ShardSettings, verify_shards, write_shards
    from esvit.data.sources import ImageFolderSource

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="esvit-bench-shard-"))
    try:
        images = tmp / "images"
        if not (images / "train").is_dir():
            print(f"making {args.images} JPEGs of ~{args.kb:.0f} KB in {images} ...", flush=True)
            mean_kb = make_jpeg_folder(images, args.images, args.kb, args.fashion_root)
        else:
            files = list(images.rglob("*.jpg"))
            mean_kb = float(np.mean([p.stat().st_size for p in files]) / 1e3)
        n = sum(1 for _ in images.rglob("*.jpg"))
        _read_all(images)  # both contenders start from a warm page cache
        src = ImageFolderSource(str(images))
        settings = ShardSettings(max_samples=2000, max_bytes=10**9, workers=args.workers, seed=0)
        t_tar, t_shard = [], []
        for _ in range(args.repeats):
            out_tar = tmp / "all.tar"
            t0 = time.perf_counter()
            subprocess.run(["tar", "cf", str(out_tar), "-C", str(images), "."], check=True)
            t_tar.append(time.perf_counter() - t0)
            out_tar.unlink()
            out = tmp / "shards"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            write_shards(src, "bench", "train", out, settings, progress=False)
            t_shard.append(time.perf_counter() - t0)
        problems = verify_shards(out)
        if problems:
            raise RuntimeError(f"benchmark shards failed verification: {problems[:3]}")
        gb = n * mean_kb / 1e6
        return {
            "images": n,
            "mean_kb": round(mean_kb, 1),
            "workers": args.workers,
            "tar_s": round(min(t_tar), 3),
            "shard_s": round(min(t_shard), 3),
            "tar_img_s": round(n / min(t_tar), 1),
            "shard_img_s": round(n / min(t_shard), 1),
            "shard_gb_s": round(gb / min(t_shard), 3),
            "ratio_vs_tar": round(min(t_tar) / min(t_shard), 3),
        }
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="swin_tiny_w7", help="backbone (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="images per step (default %(default)s)")
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--locals", type=int, default=6, help="local crops (default %(default)s)")
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--region-weight", type=float, default=0.5, help="0 = view loss only (DINO)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--no-reuse-memory", action="store_true", help="leave glibc's malloc settings alone (run.reuse_memory=false)")


def matmul_peak(device: str, dtype: "torch.dtype", n: int = 2048, repeats: int = 10) -> float:
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
    cfg = load_train_config(None, [
        f"model.arch={args.arch}", f"model.out_dim={args.out_dim}", f"loss.region_loss_weight={args.region_weight}",
        f"optim.batch_size_per_device={args.batch}", f"crops.global_size={args.global_size}",
        f"crops.local_size=[{args.local_size}]", f"crops.local_number=[{args.locals}]", f"run.precision={args.precision}",
        f"run.device={args.device}", f"run.threads={args.threads}", "optim.warmup_epochs=0", "optim.epochs=1",
        "optim.freeze_last_layer=0", f"run.reuse_memory={not args.no_reuse_memory}",
    ])  # fmt: skip
    tr = Trainer(cfg, Path(tempfile.gettempdir()), iters_per_epoch=args.steps + 3)
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(args.batch, 3, args.global_size, args.global_size, generator=gen) for _ in range(2)]
    crops += [torch.randn(args.batch, 3, args.local_size, args.local_size, generator=gen) for _ in range(args.locals)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
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
        "arch": args.arch, "batch": args.batch, "crops": f"2x{args.global_size}+{args.locals}x{args.local_size}",
        "out_dim": args.out_dim, "region_weight": args.region_weight, "precision": args.precision, "device": args.device,
        "threads": args.threads, "reuse_memory": not args.no_reuse_memory, "step_s": round(dt, 3), "img_s": round(args.batch / dt, 3),
        "gflop_per_step": round(flops / 1e9, 1), "gflop_s": round(achieved, 1), "matmul_peak_gflop_s": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3), "peak_rss_gb": round(_peak_rss_gb(), 2),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- probe


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=50000, help="training samples (default %(default)s)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--separation", type=float, default=0.15, help="class-centre scale (default %(default)s: ~85 %% test accuracy at 768 dims, 100 classes)")
    p.add_argument("--sklearn-max-iter", type=int, default=1000, help="as CLIP's probe (default %(default)s)")


@benchmark("probe", _probe_args)
def bench_probe(args: argparse.Namespace) -> dict:
    """The transfer probe's lambda search + refit vs scikit-learn's L-BFGS LogisticRegression, same search."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from esvit.data.sources import stratified_split
    from esvit.eval.probe import LAMBDA_GRID, lambda_search, run_probe, standardize

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy / scikit-learn's BLAS and OpenMP: the same threads as torch
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes, args.dim)) * args.separation
    y = rng.integers(0, args.classes, args.n + args.n_test)
    x = (centers[y] + rng.normal(size=(len(y), args.dim))).astype(np.float32)
    train_x, train_y = torch.from_numpy(x[: args.n]), torch.from_numpy(y[: args.n])
    test_x, test_y = torch.from_numpy(x[args.n :]), torch.from_numpy(y[args.n :])

    t0 = time.perf_counter()
    ours = run_probe(train_x, train_y, test_x, test_y)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    parts = stratified_split(y[: args.n], 0.2, 0)
    fx, vx = standardize(train_x[parts["train"]], train_x[parts["test"]])
    fy, vy = y[: args.n][parts["train"]], y[: args.n][parts["test"]]
    fits = {"n": 0}

    def evaluate(i: int, warm: int | None) -> float:
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
        "n": args.n, "dim": args.dim, "classes": args.classes, "threads": args.threads,
        "ours_s": round(t_ours, 1), "sklearn_s": round(t_ref, 1), "speedup": round(t_ref / t_ours, 2),
        "ours_acc": round(ours.value, 2), "sklearn_acc": round(ref_acc, 2), "ours_lambda": ours.best_lambda,
        "sklearn_lambda": float(LAMBDA_GRID[best]), "fits": fits["n"] + 1,
    }  # fmt: skip


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", default="swin_pico:32,swin_tiny_w7:224", help="arch:image_size list (default %(default)s: the demo model, Swin-T)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="data-loader workers (default %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


@benchmark("extract", _extract_args)
def bench_extract(args: argparse.Namespace) -> dict:
    """``esvit extract`` end to end (shards -> decode -> eval transform -> pooled + last-4-blocks), images/s."""
    import torch

    from esvit.data.shards import ShardSettings, write_shards
    from esvit.data.sources import get_source
    from esvit.eval.features import extract, load_backbone

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"batch": args.batch, "workers": args.workers, "threads": args.threads, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        src = get_source("digits")  # 1,438 real images; the eval transform resizes them to each model's input size
        write_shards(src, "digits", "train", Path(tmp) / "shards", ShardSettings(workers=1), progress=False)
        for spec in args.archs.split(","):
            arch, size = spec.split(":")
            net, meta = load_backbone(None, arch)
            t0 = time.perf_counter()
            res = extract(net, Path(tmp) / "shards", Path(tmp) / f"{arch}.pt", meta, image_size=int(size), batch_size=args.batch,
                          num_workers=args.workers, device=args.device, show_progress=False)  # fmt: skip
            dt = time.perf_counter() - t0
            out[f"{arch}@{size}_img_s"] = round(len(res["keys"]) / dt, 1)
            out[f"{arch}@{size}_images"] = len(res["keys"])
    return out


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", default="swin_tiny_w7", help="comma-separated backbones (default %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="images per forward (the paper's Table 1: 128)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed batches after one warm-up batch")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)


@benchmark("infer", _infer_args)
def bench_infer(args: argparse.Namespace) -> dict:
    """Backbone inference images/s as the paper's Table 1 measures it (batch 128, 224 px, one device)."""
    import torch

    from esvit.models import Backbone

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench infer: --device cuda but no CUDA device is visible")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    out: dict[str, Any] = {"batch": args.batch, "size": args.size, "precision": args.precision, "device": args.device, "img_s": {}}
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    for arch in args.archs.split(","):
        net = Backbone(arch).eval().to(args.device)
        times = []
        with torch.inference_mode(), torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
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


# ----------------------------------------------------------------------------------------------- entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/bench", help="folder for the JSON-lines files (default %(default)s)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (configure, fn) in BENCHES.items():
        configure(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0]))


def run(args: argparse.Namespace) -> int:
    _, fn = BENCHES[args.bench]
    _emit(args.bench, fn(args), Path(args.out))
    return 0
