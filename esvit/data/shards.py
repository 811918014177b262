"""WebDataset shard writer and verifier (the contract in docs/design.md).

Layout: ``<out_dir>/<dataset>-<split>-%06d.tar`` plus ``manifest.json``. Each sample is ``__key__``, the
image (original bytes for encoded sources, PNG for arrays) and ``.cls``.

How a run works, and why:

1. The source lists its records (cheap: paths or indices); a seeded permutation fixes the global order, so
   every shard mixes classes and the same input + seed give byte-identical shards.
2. The order is cut into *chunks* of ``max_samples``; worker processes write one chunk each, starting a new
   part when the next sample would push the tar past ``max_bytes``. A chunk's parts and its JSON record are
   written under temporary names and renamed when complete, in ``<out_dir>/.work/``.
3. When every chunk is done, the parts are renamed in order to their final names and ``manifest.json`` is
   written last, atomically. A killed run leaves no manifest; rerunning skips the finished chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from esvit import __version__
from esvit.atomic import atomic_write_json
from esvit.data.sources import Record, Source, get_source
from esvit.errors import ConfigError, ShardError
from esvit.fields import did_you_mean, option
from esvit.lock import RunLock

if TYPE_CHECKING:  # a type only: esvit.config imports this module
    from esvit.config import PipelineConfig

__all__ = [
    "ShardError",
    "ShardConfig",
    "shard_dataset",
    "write_shards",
    "verify_shards",
    "shard_pattern",
    "check_image",
    "file_sha256",
]

MANIFEST = "manifest.json"
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile pads the archive to a multiple of this


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """The sharding stage: the ``shard`` section of the workflow config and the settings :func:`write_shards` takes."""

    max_samples: int = option(10000, gt=0, help="Samples per shard at most.")
    max_mb: float = option(1024.0, gt=0, help="Megabytes (1e6 bytes) per shard at most, tar bytes.")
    workers: int = option(2, gt=0, help="Worker processes that write shards.")
    seed: int = option(0, min=0, help="Seed of the global shuffle; same input and seed give identical shards.")
    max_bad_fraction: float = option(
        0.001, min=0, max=1, help="Fail when more than this fraction of images is unreadable."
    )
    check: Literal["header", "decode", "none"] = option(
        "header",
        help="Image check: header (parse header and end marker, fast), decode (full decode), none.",
    )

    @property
    def max_bytes(self) -> int:
        """``max_mb`` in bytes: the tar size a shard stays within."""
        return int(self.max_mb * 1e6)


def shard_pattern(dataset: str, split: str) -> str:
    return f"{dataset}-{split}-%06d.tar"


# ------------------------------------------------------------------------------------------------ image checks


def check_image(data: bytes, ext: str, mode: str) -> str | None:
    """Return why ``data`` is not a readable image, or ``None`` when it is.

    ``header`` parses the header (format, size) and checks the end marker of JPEG and PNG files, which
    catches truncation without decoding; ``decode`` decodes the whole image; ``none`` checks nothing.
    """
    if mode == "none":
        return None
    from PIL import Image

    if len(data) == 0:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                return f"bad size {width}x{height}"
            if mode == "decode":
                img.load()
                return None
            fmt = img.format
    except Exception as exc:  # PIL raises many types for broken files
        return f"{type(exc).__name__}: {exc}"
    if fmt == "JPEG" and not _jpeg_complete(data):
        return "truncated JPEG (no end-of-image marker after its last scan)"
    if fmt == "PNG" and b"IEND" not in data[-16:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's marker stream reaches its end-of-image marker (FFD9).

    Walks the segments by their lengths (so an FFD9 inside an embedded EXIF thumbnail does not count) and jumps
    through entropy-coded scan data to the next real marker (FF followed by anything but 00 stuffing or a
    restart marker); stray bytes between segments are skipped as libjpeg does. Bytes after the EOI marker,
    which cameras and editors write and decoders ignore, are fine; a file cut anywhere before it is not: the
    same verdict as a full decode."""
    n, i = len(data), 2  # after SOI
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= n:
            return False
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x00:  # fill byte, or a stray FF00 between segments
            i += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            while True:
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return False
                nxt = data[i + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    i += 1 if nxt == 0xFF else 2
                    continue
                break


def _encode_png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def _tar_total(payload: int) -> int:
    """Size of an archive whose members occupy ``payload`` bytes (end blocks + record padding included)."""
    return -(-(payload + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


class _HashingWriter(io.RawIOBase):
    """A write-only file wrapper that counts bytes and computes sha256 on the fly."""

    def __init__(self, f):
        self.f, self.n, self.h = f, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n


# ----------------------------------------------------------------------------------------------- the writer

# Inherited by forked workers: the source and the shared progress counter.
_WORKER: dict[str, Any] = {}


def _write_chunk(job: tuple[int, list[int]]) -> dict:
    """Write one chunk (global positions ``order``) as one or more parts; return its JSON record."""
    import webdataset as wds

    chunk, order = job
    src: Source = _WORKER["source"]
    records: list[Record] = _WORKER["records"]
    st: ShardConfig = _WORKER["settings"]
    work: Path = _WORKER["work"]
    counter = _WORKER.get("counter")
    parts, bad = [], []
    state: dict[str, Any] = {}

    def open_part() -> None:
        name = f"chunk-{chunk:06d}-{len(parts):03d}.tar"
        f = open(work / (name + ".part"), "wb")
        hw = _HashingWriter(f)
        state.update(name=name, file=f, hw=hw, writer=wds.TarWriter(hw, mtime=0, encoder=False), count=0, payload=0)

    def close_part() -> None:
        state["writer"].close()
        state["file"].close()
        os.replace(work / (state["name"] + ".part"), work / state["name"])
        parts.append(
            {
                "part": state["name"],
                "count": state["count"],
                "bytes": state["hw"].n,
                "sha256": state["hw"].h.hexdigest(),
            }
        )

    pending = 0
    for idx in order:
        rec = records[idx]
        try:
            data, ext = src.read(rec)
            if isinstance(data, np.ndarray):
                data, ext = _encode_png(data), "png"
                reason = None  # encoded here from a valid array
            else:
                reason = check_image(data, ext, st.check)
        except Exception as exc:  # an unreadable file is a bad record, not a crash
            reason, ext = f"{type(exc).__name__}: {exc}", ""
        if reason is not None:
            bad.append({"key": f"{idx:09d}", "item": src.describe(rec), "reason": reason})
        else:
            cls = str(rec.label).encode()
            size = _member_bytes(len(data)) + _member_bytes(len(cls))
            if not state or (state["count"] and _tar_total(state["payload"] + size) > st.max_bytes):
                if state:
                    close_part()
                open_part()
            state["writer"].write({"__key__": f"{idx:09d}", ext: data, "cls": cls})
            state["count"] += 1
            state["payload"] += size
        pending += 1
        if counter is not None and pending >= 64:
            with counter.get_lock():
                counter.value += pending
            pending = 0
    if state:
        close_part()
    if counter is not None and pending:
        with counter.get_lock():
            counter.value += pending
    result = {"chunk": chunk, "n": len(order), "parts": parts, "bad": bad}
    atomic_write_json(work / f"chunk-{chunk:06d}.json", result)
    return result


def _chunk_done(work: Path, chunk: int) -> dict | None:
    path = work / f"chunk-{chunk:06d}.json"
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    if all((work / p["part"]).exists() for p in res["parts"]):
        return res
    return None


def write_shards(
    source: Source,
    dataset: str,
    split: str,
    out_dir: str | Path,
    settings: ShardConfig = ShardConfig(),
    progress: bool = True,
) -> dict:
    """Shard one split of a source. See the module docstring for the procedure.

    Args:
        source: a data source instance.
        dataset: dataset name (file names, manifest).
        split: split name.
        out_dir: destination folder (created).
        settings: limits, workers, seed, bad-image policy.
        progress: show a tqdm bar.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ShardError: no records, or more bad images than ``settings.max_bad_fraction`` allows.
    """
    from esvit.progress import progress as make_progress

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():  # from now on the folder must not look complete until we finish
        manifest_path.unlink()
    records = source.records(split)
    n = len(records)
    if n == 0:
        raise ShardError(f"{dataset}/{split}: the source lists no images; check its root and split")
    classes = source.classes()

    work = out_dir / ".work"
    plan = {
        "dataset": dataset,
        "split": split,
        "n": n,
        "records_sha256": hashlib.sha256(repr([(r.ref, r.label) for r in records]).encode()).hexdigest(),
        "seed": settings.seed,
        "max_samples": settings.max_samples,
        "max_bytes": settings.max_bytes,
        "check": settings.check,
    }
    plan_path = work / "plan.json"
    if work.exists() and (not plan_path.exists() or json.loads(plan_path.read_text()) != plan):
        shutil.rmtree(work)  # left by a run with other settings: start over
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)

    order = np.random.default_rng(settings.seed).permutation(n)
    chunks = [
        (c, order[s : s + settings.max_samples].tolist()) for c, s in enumerate(range(0, n, settings.max_samples))
    ]
    results: dict[int, dict] = {}
    todo = []
    for c, idx in chunks:
        done = _chunk_done(work, c)
        if done is not None:
            results[c] = done
        else:
            todo.append((c, idx))
    resumed = n - sum(len(i) for _, i in todo)

    _WORKER.update(source=source, records=records, settings=settings, work=work)
    bar = make_progress(n, f"shard {dataset}/{split}", unit="img", initial=resumed, enabled=progress)
    try:
        if settings.workers <= 1 or len(todo) <= 1:
            _WORKER["counter"] = None
            for job in todo:
                res = _write_chunk(job)
                results[res["chunk"]] = res
                bar.update(res["n"])
        else:
            ctx = mp.get_context("fork")
            counter = ctx.Value("q", 0)
            _WORKER["counter"] = counter
            with ctx.Pool(min(settings.workers, len(todo))) as pool:
                pending = [pool.apply_async(_write_chunk, (job,)) for job in todo]
                seen = 0
                while pending:
                    time.sleep(0.1)
                    value = counter.value
                    bar.update(value - seen)
                    seen = value
                    for p in [p for p in pending if p.ready()]:
                        res = p.get()  # re-raises a worker's exception
                        results[res["chunk"]] = res
                        pending.remove(p)
                bar.update(counter.value - seen)
    finally:
        bar.close()
        _WORKER.clear()

    bad = [b for c in sorted(results) for b in results[c]["bad"]]
    if len(bad) > settings.max_bad_fraction * n:
        names = "; ".join(f"{b['item']} ({b['reason']})" for b in bad[:5])
        raise ShardError(
            f"{dataset}/{split}: {len(bad)} of {n} images are unreadable ({100 * len(bad) / n:.3f} % > "
            f"max_bad_fraction {100 * settings.max_bad_fraction:.3f} %), e.g. {names}. Fix or remove them, or "
            f"raise shard.max_bad_fraction; finished chunks are kept in {work} for the rerun."
        )

    # Final step: stale shards out, parts renamed in order, manifest last.
    prefix = f"{dataset}-{split}-"
    for stale in out_dir.glob(f"{prefix}*.tar"):
        stale.unlink()
    shards = []
    for c in sorted(results):
        for part in results[c]["parts"]:
            name = shard_pattern(dataset, split) % len(shards)
            os.replace(work / part["part"], out_dir / name)
            shards.append({"name": name, "count": part["count"], "bytes": part["bytes"], "sha256": part["sha256"]})
    manifest = {
        "format": "webdataset",
        "dataset": dataset,
        "split": split,
        "classes": classes,
        "num_classes": len(classes),
        "multilabel": bool(getattr(source, "multilabel", False)),  # then cls is a bit mask of the classes
        "total": sum(s["count"] for s in shards),
        "shards": shards,
        "bad": bad,
        "bad_count": len(bad),
        "source": {"name": source.name, "root": str(source.root) if source.root else None, "options": source.opts},
        "settings": {k: plan[k] for k in ("seed", "max_samples", "max_bytes", "check")},
        "tool": f"esvit {__version__}",
    }
    atomic_write_json(manifest_path, manifest)
    shutil.rmtree(work, ignore_errors=True)

    dt = time.perf_counter() - t0
    gb = sum(s["bytes"] for s in shards) / 1e9
    print(
        f"{dataset}/{split}: {manifest['total']} images, {len(shards)} shards, {gb:.3f} GB, "
        f"{manifest['total'] / dt:.0f} images/s, {len(bad)} bad ({dt:.1f} s)",
        flush=True,
    )
    return manifest


# ---------------------------------------------------------------------------------------------- the verifier


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{str(path)!r} does not exist: {shard_dir} is not a complete shard set; run `esvit shard`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{str(path)!r} is not valid JSON ({exc}); rerun `esvit shard`") from None


def verify_shards(shard_dir: str | Path, deep: bool = True) -> list[str]:
    """Check a shard set against its manifest.

    Args:
        shard_dir: folder holding ``manifest.json`` and the tars.
        deep: also hash every file and count its samples (otherwise sizes only).

    Returns:
        Problems, one line each, naming the shard; empty when the set is intact.
    """
    shard_dir = Path(shard_dir)
    try:
        manifest = load_manifest(shard_dir)
    except ShardError as exc:
        return [str(exc)]
    problems = []
    listed = {s["name"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in shard_dir.glob("*.tar") if p.name not in listed):
        problems.append(f"{extra}: not listed in the manifest")
    total = 0
    for s in manifest["shards"]:
        path = shard_dir / s["name"]
        if not path.is_file():
            problems.append(f"{s['name']}: missing")
            continue
        size = path.stat().st_size
        if size != s["bytes"]:
            problems.append(f"{s['name']}: {size} bytes, manifest says {s['bytes']} (truncated or replaced)")
            continue
        if not deep:
            total += s["count"]
            continue
        digest = file_sha256(path)
        if digest != s["sha256"]:
            problems.append(f"{s['name']}: sha256 {digest[:12]}... differs from the manifest's {s['sha256'][:12]}...")
            continue
        try:
            with tarfile.open(path) as tf:
                keys = {m.name.split(".", 1)[0] for m in tf.getmembers()}
        except tarfile.TarError as exc:
            problems.append(f"{s['name']}: not a readable tar ({exc})")
            continue
        if len(keys) != s["count"]:
            problems.append(f"{s['name']}: {len(keys)} samples, manifest says {s['count']}")
        total += len(keys)
    if not problems and total != manifest["total"]:
        problems.append(f"total {total} samples, manifest says {manifest['total']}")
    return problems


def shard_dataset(
    cfg: PipelineConfig,
    dataset: str,
    split: str | None = None,
    out: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """The sharding stage for one dataset of a workflow config (``esvit shard``): each split (or ``split``) to
    ``<data_dir>/shards/<dataset>/<split>``, or to ``out`` (one split: that folder; every split: a folder per split
    inside it), each folder locked while it is written.

    Args:
        cfg: the validated workflow config.
        dataset: a key of ``cfg.datasets``.
        split: one of its splits (default: all).
        out: the output folder instead of the data folder's.
        workers: writer processes instead of ``cfg.shard.workers``.
        progress: show progress.

    Returns:
        The shard folders written.

    Raises:
        ConfigError: ``dataset`` or ``split`` is not in the config.
    """
    if dataset not in cfg.datasets:
        raise ConfigError(
            f"--dataset {dataset!r} is not in the config's datasets ({', '.join(cfg.datasets)})."
            f"{did_you_mean(dataset, cfg.datasets)}"
        )
    ds = cfg.datasets[dataset]
    if split and split not in ds.splits:
        raise ConfigError(f"--split {split!r} is not among datasets.{dataset}.splits ({', '.join(ds.splits)})")
    settings = dataclasses.replace(cfg.shard, workers=workers) if workers else cfg.shard
    source = get_source(ds.source, ds.root, ds.options, cache_dir=str(Path(cfg.data_dir) / "raw" / dataset))
    folders = []
    for name in [split] if split else ds.splits:
        if out:
            folder = Path(out) if split else Path(out) / name
        else:
            folder = Path(cfg.data_dir) / "shards" / dataset / name
        with RunLock(folder, "shard folder"):
            write_shards(source, dataset, name, folder, settings, progress=progress)
        folders.append(folder)
    return folders
