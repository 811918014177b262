"""``esvit bench loader``: the fast multi-crop input pipeline against the reference one, per CPU core.

Both read the same shard set of real photographs at ImageNet's size through :func:`train_pipeline` (tar
reading, shuffling, decoding, 2 global + N local crops with the colour ops, collation) and end with the
model's float input (the fast pipeline's normalisation, which a GPU would do, is counted here on the CPU).
One process, one thread each (torch, OpenCV): images/s per core; ``--workers N`` measures N loader processes.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from esvit.bench.registry import benchmark


def _loader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=600, help="distinct JPEGs in the shard set (default %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per run (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (default %(default)s)")
    p.add_argument("--locals", type=int, default=8, help="local crops (default %(default)s, the paper's)")
    p.add_argument("--global-size", type=int, default=224, help="side of the 2 global crops (default %(default)s)")
    p.add_argument("--local-size", type=int, default=96, help="side of the local crops (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="loader processes (0: in this process = per core)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each; best is kept")
    p.add_argument("--workdir", help="folder for the JPEGs and shards (default: a temp dir, removed after)")


def photographs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct real photographs at ImageNet's typical sizes (500 x 375, 375 x 500, 500 x 333, ...), JPEG
    quality 90: random crops, flips and rescales of scikit-learn's two sample photos (427 x 640)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(a[top : top + ch, left : left + cw])
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        size = [(500, 375), (375, 500), (500, 333), (500, 400), (400, 500)][rng.integers(0, 5)]
        buf = io.BytesIO()
        img.resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@benchmark("loader", _loader_args)
def bench_loader(args: argparse.Namespace) -> dict:
    """Fast multi-crop loader vs the reference (PIL decode + torchvision per crop), images/s per core."""
    import cv2
    import torch

    from esvit.data.multicrop import FastMultiCrop
    from esvit.data.pipeline import make_loader, open_shards, train_pipeline
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import ImageFolderSource
    from esvit.data.transforms import MultiCropAugmentation

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="esvit-bench-loader-"))
    try:
        shards = tmp / "shards"
        if not (shards / "manifest.json").exists():
            folder = tmp / "images" / "train" / "photo"
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(photographs(args.images)):
                (folder / f"{i:06d}.jpg").write_bytes(data)
            write_shards(
                ImageFolderSource(str(tmp / "images")),
                "photos",
                "train",
                shards,
                ShardConfig(max_samples=200, workers=1),
                progress=False,
            )
        shard_set = open_shards(shards)
        mean_kb = sum(s["bytes"] for s in shard_set.manifest["shards"]) / shard_set.total / 1e3
        crops = dict(
            global_size=args.global_size,
            global_scale=(0.4, 1.0),
            local_number=[args.locals],
            local_size=[args.local_size],
            local_scale=(0.05, 0.4),
        )
        fast = FastMultiCrop(**crops)
        # name: (augmentation, shard check); "fast, count only" prices the sha256 the readers compute while streaming
        contenders = {
            "reference": (MultiCropAugmentation(**crops), "sha256"),
            "fast": (fast, "sha256"),
            "fast, count only": (fast, "count"),
        }
        cpu = torch.device("cpu")

        def timed(augment, verify: str) -> float:
            pipe = train_pipeline(shard_set, augment, args.batch, seed=0, shuffle_buffer=64, verify=verify)
            it = iter(make_loader(pipe, args.workers, args.batches + 2))
            out = augment.finish(next(it)[0], cpu)  # warm-up batch (worker start, caches)
            t0 = time.perf_counter()
            for _ in range(args.batches):
                out = augment.finish(next(it)[0], cpu)
            dt = time.perf_counter() - t0
            assert len(out) == 2 + args.locals and out[0].dtype == torch.float32
            return args.batches * args.batch / dt

        best = {name: 0.0 for name in contenders}
        for _ in range(args.repeats):
            for name, (augment, verify) in contenders.items():
                best[name] = max(best[name], timed(augment, verify))
        per = "core" if args.workers == 0 else f"{args.workers} workers"
        return {
            "images": shard_set.total,
            "mean_kb": round(mean_kb, 1),
            "crops": f"2x{args.global_size}+{args.locals}x{args.local_size}",
            "batch": args.batch,
            "workers": args.workers,
            "per": per,
            "reference_img_s": round(best["reference"], 2),
            "fast_img_s": round(best["fast"], 2),
            "ratio": round(best["fast"] / best["reference"], 3),
            "fast_count_only_img_s": round(best["fast, count only"], 2),
            "sha256_cost": round(1 - best["fast"] / best["fast, count only"], 4),
        }
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
