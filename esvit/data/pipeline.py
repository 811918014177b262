"""Readers for shard sets: the WebDataset pipelines later stages use.

- **Training** (:func:`train_pipeline`): each (rank, worker) draws shards with replacement from a stream seeded
  by ``(seed, epoch, rank, worker)``, shuffles samples in a buffer seeded the same way, and yields batches
  without a partial tail. An epoch is a fixed number of batches (:func:`make_loader`), so every rank runs
  the same number of steps (uneven shards cannot hang DDP), and the stream of an epoch is a pure function of
  its seeds: resuming at batch ``k`` of an epoch skips exactly the samples the first ``k`` batches used,
  before decoding them.
- **Evaluation** (:func:`eval_pipeline`): ordered, every sample exactly once across ranks and workers; shards
  are split between the (rank, worker) pairs when there are enough of them, otherwise samples are.

Node and worker splitting are explicit (rank and world size are arguments, never guessed from the
environment), as the pitfalls list of docs/design.md §6 asks.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from esvit.data.images import decode_rgb
from esvit.data.shards import ShardError, load_manifest

__all__ = [
    "ShardSet",
    "EpochCursor",
    "checked_samples",
    "open_shards",
    "train_pipeline",
    "eval_pipeline",
    "make_loader",
    "IMAGE_KEYS",
]

IMAGE_KEYS = "jpg;png;jpeg;ppm;bmp;webp;tif;gif"
log = logging.getLogger("esvit")


@dataclass(frozen=True)
class ShardSet:
    """A complete shard set: its manifest and the tar paths in order."""

    directory: Path
    manifest: dict
    urls: list[str]

    def expected(self) -> dict[str, dict]:
        """Per tar path: its manifest entry (sample count, sha256) and the folder to name in errors."""
        entries = {}
        for url, entry in zip(self.urls, self.manifest["shards"]):
            entries[url] = {**entry, "dir": str(Path(url).parent)}
        return entries

    @property
    def total(self) -> int:
        return int(self.manifest["total"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])


def open_shards(directory: str | Path) -> ShardSet:
    """Open a shard set after a cheap check (manifest present, every shard there with the right size).

    ``directory`` may list several shard folders separated by commas (a pretraining mix): their shards are
    pooled (the training reader draws shard by shard) and the manifest totals add up.

    Raises:
        ShardError: naming the folder or shard and what to do.
    """
    if "," in str(directory):
        parts = [open_shards(d.strip()) for d in str(directory).split(",") if d.strip()]
        manifest = {
            "total": sum(p.total for p in parts),
            "classes": [],
            "shards": sum((p.manifest["shards"] for p in parts), []),
            "mix": [str(p.directory) for p in parts],
        }
        return ShardSet(parts[0].directory, manifest, sum((p.urls for p in parts), []))
    directory = Path(directory)
    manifest = load_manifest(directory)
    urls = []
    for s in manifest["shards"]:
        path = directory / s["name"]
        if not path.is_file() or path.stat().st_size != s["bytes"]:
            raise ShardError(
                f"shard {str(path)!r} is missing or has the wrong size; run `esvit shard --verify {directory}`"
            )
        urls.append(str(path))
    if not urls:
        raise ShardError(f"{directory}: the manifest lists no shards")
    return ShardSet(directory, manifest, urls)


class _HashingReader(io.RawIOBase):
    """A read-only file that hashes what passes through it (sha256 while streaming: no second read)."""

    def __init__(self, f, hashing: bool = True):
        self.f, self.sha = f, hashlib.sha256() if hashing else None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n and self.sha is not None:
            self.sha.update(memoryview(b)[:n])
        return n or 0

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def checked_samples(expected: dict[str, dict], verify: str = "sha256") -> Callable:
    """A pipeline stage: ``{"url"}`` items -> the samples of each tar, checked against the manifest: the sample
    count always, and with ``verify="sha256"`` the file's sha256. A mismatch (a flipped byte in a tar header,
    which makes tar readers stop early; in a label; anywhere) raises :class:`ShardError` naming the shard and
    ``esvit shard --verify``.

    The count and the hash are computed while streaming (no second read) and compared when a shard has been read
    to its end — every time for the evaluation reader; for the training reader every shard read except the one
    each worker is in when an epoch ends (a shard cut short by damage ends its read there, so it is caught at
    once)."""

    def fail(url: str, problem: str) -> None:
        raise ShardError(
            f"shard {url} is damaged: {problem}; run `esvit shard --verify {expected[url]['dir']}` and rewrite it"
        )

    def stage(src: Iterator[dict]) -> Iterator[dict]:
        for item in src:
            url = item["url"]
            info = expected[url]
            n, problem = 0, None
            with open(url, "rb") as f:
                reader = _HashingReader(f, hashing=verify == "sha256")
                try:
                    members = wds.tariterators.tar_file_iterator(io.BufferedReader(reader, buffer_size=1 << 20))
                    for sample in wds.tariterators.group_by_keys({**m, "__url__": url} for m in members):
                        n += 1
                        yield sample
                except (tarfile.TarError, OSError, ValueError) as exc:
                    problem = f"unreadable after {n} samples ({type(exc).__name__}: {exc})"
                reader.drain()
            if problem is None and n != info["count"]:
                problem = f"{n} samples read, its manifest says {info['count']}"
            if problem is None and verify == "sha256" and reader.sha.hexdigest() != info["sha256"]:
                problem = "its sha256 differs from the manifest's (the bytes changed)"
            if problem:
                fail(url, problem)

    return stage


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: int) -> int:
    return hash(tuple(parts)) & 0x7FFFFFFF  # ints hash to themselves: stable across processes


# ----------------------------------------------------------------------------------------------- training


def _role(skip_batches: int) -> int:
    """The worker whose stream this worker continues. DataLoader takes batches from its workers round-robin
    starting at worker 0, so after ``skip_batches`` batches the next one came from worker ``skip % W``: on
    resume, worker ``w`` plays the part of worker ``(w + skip) % W`` of the uninterrupted epoch."""
    worker, num_workers = _worker()
    return (worker + skip_batches) % num_workers


class EpochCursor:
    """Where a training stream starts: ``(epoch, batches of it already consumed)``. Every stage of the pipeline
    reads it when its iteration starts. It lives in shared memory, so a loader's persistent workers see a new
    position each time the loader is iterated again (the next epoch) without being restarted."""

    def __init__(self, epoch: int = 0, skip_batches: int = 0):
        self._pos = torch.tensor([epoch, skip_batches], dtype=torch.int64).share_memory_()

    def set(self, epoch: int, skip_batches: int = 0) -> None:
        self._pos[0], self._pos[1] = epoch, skip_batches

    def get(self) -> tuple[int, int]:
        return int(self._pos[0]), int(self._pos[1])


class _ResampledShards(torch.utils.data.IterableDataset):
    """Infinite shard stream, drawn with replacement, seeded by (seed, epoch, rank, worker)."""

    def __init__(self, urls: list[str], seed: int, rank: int, cursor: EpochCursor):
        self.urls, self.seed, self.rank, self.cursor = urls, seed, rank, cursor

    def __iter__(self) -> Iterator[dict]:
        epoch, skip = self.cursor.get()
        rng = random.Random(_seed(self.seed, epoch, self.rank, _role(skip), 1))
        while True:
            yield {"url": rng.choice(self.urls)}


def _skip_for_resume(cursor: EpochCursor, batch_size: int) -> Callable:
    """Drop the raw samples (before decoding) that the role's worker fed the first ``skip_batches`` batches
    (worker r made batches r, r + W, r + 2W, ...), and number the rest: the number seeds the augmentation."""

    def stage(src: Iterator[dict]) -> Iterator[dict]:
        _, num_workers = _worker()
        _, skip_batches = cursor.get()
        mine = len(range(_role(skip_batches), skip_batches, num_workers)) * batch_size
        for i, sample in enumerate(islice(src, mine, None), start=mine):
            sample["__index__"] = i
            yield sample

    return stage


def _seeded_transform(
    transform: Callable, seed: int, rank: int, cursor: EpochCursor, on_bad_image: str = "stop"
) -> Callable:
    """Apply ``transform`` with Python's and torch's RNGs seeded per sample from (seed, epoch, rank, role,
    sample number), restoring the process RNGs afterwards: augmentations are the same whether an epoch runs
    straight through or resumes, and the training process's own RNG stream is untouched."""

    def stage(src: Iterator[dict]) -> Iterator[tuple]:
        epoch, skip_batches = cursor.get()
        role = _role(skip_batches)
        for sample in src:
            s = _seed(seed, epoch, rank, role, 3, sample["__index__"])
            py_state = random.getstate()
            try:
                with torch.random.fork_rng(devices=[]):
                    random.seed(s)
                    torch.default_generator.manual_seed(s)  # the CPU generator only: torch.manual_seed would
                    out = transform(sample["__image__"])  # reseed the GPUs' too, every sample, in-process
            except Exception as exc:  # a corrupt image: PIL / OpenCV raise many types
                bad = (
                    f"image {sample['__key__']} in shard {sample['__url__']} does not decode "
                    f"({type(exc).__name__}: {exc})"
                )
                if on_bad_image == "skip":
                    log.warning("skipped: %s (data.on_bad_image=skip)", bad)
                    continue
                raise ShardError(
                    f"{bad}; rewrite the shard set (`esvit shard`), or set data.on_bad_image=skip"
                ) from None
            finally:
                random.setstate(py_state)
            yield out, sample["__label__"]

    return stage


def _pick(sample: dict) -> dict:
    """The image (decoded, or the raw bytes when the transform decodes itself), label and sample number."""
    image = next((sample[k] for k in IMAGE_KEYS.split(";") if k in sample), None)
    if image is None:
        raise ShardError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image")
    try:
        label = int(sample["cls"])
    except (KeyError, ValueError):
        raise ShardError(
            f"sample {sample.get('__key__')} in {sample.get('__url__')} has no readable label (.cls); "
            f"run `esvit shard --verify {Path(str(sample.get('__url__'))).parent}`"
        ) from None
    return {
        "__image__": image,
        "__label__": label,
        "__index__": sample["__index__"],
        "__key__": sample.get("__key__"),
        "__url__": sample.get("__url__"),
    }


def _decode_image(sample: dict) -> dict:
    """Decode the sample's image member to 8-bit RGB (:mod:`esvit.data.images`), naming shard and key if it fails."""
    for k in IMAGE_KEYS.split(";"):
        if k in sample:
            try:
                sample[k] = decode_rgb(sample[k])
            except Exception as exc:  # PIL raises many types for broken files
                raise ShardError(
                    f"image {sample.get('__key__')} in shard {sample.get('__url__')} does not decode "
                    f"({type(exc).__name__}: {exc}); rewrite the shard set with `esvit shard`"
                ) from None
            break
    return sample


def _seeded_shuffle(bufsize: int, seed: int, rank: int, cursor: EpochCursor) -> Callable:
    def stage(src: Iterator) -> Iterator:
        epoch, skip_batches = cursor.get()
        rng = random.Random(_seed(seed, epoch, rank, _role(skip_batches), 2))
        yield from wds.filters._shuffle(src, bufsize=bufsize, initial=bufsize, rng=rng)

    return stage


def train_pipeline(
    shards: ShardSet,
    transform: Callable[[Any], Any],
    batch_size: int,
    *,
    rank: int = 0,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 2000,
    skip_batches: int = 0,
    cursor: EpochCursor | None = None,
    verify: str = "sha256",
    on_bad_image: str = "stop",
    collate: Callable = torch.utils.data.default_collate,
) -> wds.DataPipeline:
    """Infinite, shuffled, resampled training batches of ``(transform(image), label)``.

    Args:
        shards: from :func:`open_shards`.
        transform: applied to each RGB PIL image (e.g. the multi-crop augmentation).
        batch_size: per rank; partial batches are dropped.
        rank: this process's global rank (seeds differ per rank, so ranks see different samples).
        seed: base seed; epoch: the epoch, part of every seed.
        shuffle_buffer: samples held in the shuffle buffer.
        skip_batches: batches of this epoch already consumed (exact resume).
        cursor: instead of ``epoch`` and ``skip_batches``: a shared :class:`EpochCursor`, moved between
            iterations of one loader (persistent workers).
        verify: ``sha256`` (each shard's bytes and sample count against the manifest, hashed while streaming) or
            ``count`` (the sample count only); a damaged shard stops the pipeline naming it.
        on_bad_image: an image that does not decode: ``stop`` (naming shard and key) or ``skip`` (dropped and
            logged, the stream goes on).
        collate: batch collation.

    A transform with ``takes_bytes = True`` (:class:`esvit.data.multicrop.FastMultiCrop`) gets the undecoded
    image bytes, so it can decode at a reduced scale; others get an RGB PIL image.
    """
    decode = [] if getattr(transform, "takes_bytes", False) else [wds.map(_decode_image)]
    cursor = cursor or EpochCursor(epoch, skip_batches)
    return wds.DataPipeline(
        _ResampledShards(shards.urls, seed, rank, cursor),
        checked_samples(shards.expected(), verify),
        _seeded_shuffle(shuffle_buffer, seed, rank, cursor),
        _skip_for_resume(cursor, batch_size),
        *decode,
        wds.map(_pick),
        _seeded_transform(transform, seed, rank, cursor, on_bad_image),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )


def make_loader(
    pipeline: wds.DataPipeline,
    num_workers: int,
    batches_per_epoch: int | None = None,
    persistent: bool = False,
    **kw: Any,
) -> wds.WebLoader:
    """Wrap a pipeline that already yields batches in a ``WebLoader``; ``batches_per_epoch`` fixes the epoch;
    ``persistent``: the workers outlive an iteration (move the pipeline's :class:`EpochCursor` between them)."""
    kw.setdefault("generator", torch.Generator())  # never draw worker seeds from the global RNG (exact resume)
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=persistent and num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        **kw,
    )
    return loader.with_epoch(batches_per_epoch) if batches_per_epoch else loader


# --------------------------------------------------------------------------------------------- evaluation


def eval_pipeline(
    shards: ShardSet,
    transform: Callable[[Any], Any],
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    verify: str = "sha256",
    collate: Callable = torch.utils.data.default_collate,
) -> wds.DataPipeline:
    """Ordered batches of ``(keys, images, labels)``; across ranks and workers each sample appears once; every
    shard is checked against its manifest as it is read (``verify``, see :func:`checked_samples`), and an image
    that does not decode stops it naming shard and key."""
    n_urls = len(shards.urls)

    def shard_stage(src: Iterator[dict]) -> Iterator[dict]:
        worker, num_workers = _worker()
        slot, slots = rank * num_workers + worker, world_size * num_workers
        urls = [d["url"] for d in src]
        yield from ({"url": u} for u in (urls[slot::slots] if n_urls >= slots else urls))

    def sample_stage(src: Iterator[dict]) -> Iterator[dict]:
        worker, num_workers = _worker()
        slot, slots = rank * num_workers + worker, world_size * num_workers
        yield from (src if n_urls >= slots else islice(src, slot, None, slots))

    return wds.DataPipeline(
        wds.SimpleShardList(shards.urls),
        shard_stage,
        checked_samples(shards.expected(), verify),
        sample_stage,
        wds.map(_decode_image),
        wds.to_tuple("__key__", IMAGE_KEYS, "cls"),
        wds.map_tuple(None, transform, int),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
