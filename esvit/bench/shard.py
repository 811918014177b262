"""``esvit bench shard``: the sharding stage against ``tar cf`` on the same JPEGs."""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from esvit.bench.registry import benchmark

# ----------------------------------------------------------------------------------------------- shard


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=20000, help="JPEG files to shard (default %(default)s)")
    p.add_argument(
        "--kb", type=float, default=110, help="target JPEG size in KB, ImageNet's mean (default %(default)s)"
    )
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
    from esvit.data.shards import ShardConfig, verify_shards, write_shards
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
        settings = ShardConfig(max_samples=2000, max_mb=1000, workers=args.workers, seed=0)
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
