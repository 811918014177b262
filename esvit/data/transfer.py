"""The 18 transfer datasets as data sources, driven by the registry ``esvit/resources/datasets.yaml``.

Each registry entry becomes a source of the same name (``source: food101``, ``root: /data/food101``): the
torchvision class it names is opened with ``download=False`` and the entry's split arguments; the rest of the
protocol (docs/datasets.md §2) is applied here:

- ``sample_split`` (EuroSAT, RESISC45): a seeded random train / test sample of the given sizes from all images;
- ``per_class_train`` (Caltech-101): a seeded 30 images per class for train, the rest for test;
- ``multilabel`` (VOC 2007): the label set from the XML annotation, stored as a bit mask in the shard's
  ``cls`` (bit c = class c; ``esvit.eval`` turns it back into a multi-hot vector);
- ``derived_label: closest_vehicle_distance`` (KITTI): the minimum depth z over Car / Van / Truck objects,
  binned < 8 m, 8-20 m, > 20 m, or no vehicle (VTAB / CLIP); a seeded stratified test split of 711 images.

When the raw files are missing, the message names the files to download and the layout expected under root.
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from esvit.data.sources import (
    IMAGE_EXTENSIONS,
    Record,
    Source,
    SourceError,
    TorchvisionSource,
    register_source,
    stratified_split,
)
from esvit.resources import resource_path

__all__ = ["REGISTRY_PATH", "load_registry", "VOC_CLASSES", "decode_multilabel", "kitti_distance_label"]

REGISTRY_PATH = resource_path("datasets.yaml")
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
KITTI_BINS = ("closest vehicle < 8 m", "closest vehicle 8-20 m", "closest vehicle > 20 m", "no vehicle")
KITTI_TEST_FRACTION = 711 / 7481  # of the labelled KITTI training images, VTAB / CLIP test on 711


@functools.cache
def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, dict]:
    """The registry: dataset name -> entry (class, classes, metric, splits, layout, download, ...)."""
    return yaml.safe_load(Path(path).read_text())


def decode_multilabel(masks: Any, n_classes: int) -> np.ndarray:
    """Bit masks (one int per sample) -> multi-hot [N, n_classes] uint8."""
    masks = np.asarray(masks, dtype=np.int64)
    return ((masks[:, None] >> np.arange(n_classes)) & 1).astype(np.uint8)


def kitti_distance_label(label_file: str | Path) -> int:
    """The closest-vehicle-distance class of one KITTI ``label_2`` file (KITTI_BINS)."""
    depths = []
    for line in Path(label_file).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 15 and parts[0] in ("Car", "Van", "Truck"):
            depths.append(float(parts[13]))  # location z (camera coordinates, metres)
    if not depths:
        return 3
    z = min(depths)
    return 0 if z < 8 else 1 if z < 20 else 2


def _voc_mask(annotation: str | Path) -> int:
    mask = 0
    for obj in ET.parse(annotation).getroot().iter("object"):
        mask |= 1 << VOC_CLASSES.index(obj.findtext("name").strip())
    return mask


class TransferSource(Source):
    """Base of the registry-driven sources (one subclass per registry entry, made by ``_register_all``)."""

    entry: ClassVar[dict] = {}
    # a set not downloaded yet fails its own shard job with the download instructions, and does not stop
    # the other datasets of the workflow at config time
    root_must_exist = False
    options = {"split_seed": 0, "sample_sizes": None}  # sample_sizes: {train: n, test: m} overrides sample_split

    @classmethod
    def split_names(cls, ds: Any) -> list[str] | None:
        splits = list(cls.entry.get("splits", {}))
        return ["train", "test"] if splits in ([], ["all"]) else splits

    @property
    def multilabel(self) -> bool:
        return bool(self.entry.get("multilabel"))

    def _tv(self) -> TorchvisionSource:
        if not hasattr(self, "_tv_source"):
            if self.root is None or not self.root.is_dir():
                raise SourceError(f"{self.name}: root {str(self.root)!r} does not exist. {self.missing_hint}")
            self._tv_source = TorchvisionSource(
                str(self.root), {"class": self.entry["class"], "splits": self.entry["splits"]}
            )
            self._tv_source.missing_hint = self.missing_hint
        return self._tv_source

    def classes(self) -> list[str]:
        if self.multilabel:
            return list(VOC_CLASSES)
        if self.entry.get("derived_label") == "closest_vehicle_distance":
            return list(KITTI_BINS)
        return self._tv().classes()

    def _all(self) -> list[Record]:
        """Every image of a dataset without a fixed split, as (file or index) records."""
        return self._tv().records("all")

    def records(self, split: str) -> list[Record]:
        e, seed = self.entry, int(self.opts["split_seed"])
        if split not in self.split_names(None):
            raise SourceError(f"{self.name}: no split {split!r}; splits: {', '.join(self.split_names(None))}")
        if "sample_split" in e:  # EuroSAT, RESISC45: disjoint random samples of fixed sizes
            recs = self._all()
            sizes = self.opts["sample_sizes"] or e["sample_split"]
            need = sizes["train"] + sizes["test"]
            if len(recs) < need:
                raise SourceError(
                    f"{self.name}: found {len(recs)} images under {str(self.root)!r}, the protocol "
                    "samples "
                    f"{need}; is the download complete? {self.missing_hint}"
                )
            order = np.random.default_rng(seed).permutation(len(recs))
            pick = order[: sizes["train"]] if split == "train" else order[sizes["train"] : need]
            return [recs[i] for i in sorted(pick)]
        if "per_class_train" in e:  # Caltech-101: n per class for train, the rest for test
            recs = self._caltech_files()
            labels = np.array([r.label for r in recs])
            rng = np.random.default_rng(seed)
            train = set()
            for c in np.unique(labels):
                idx = np.flatnonzero(labels == c)
                train.update(rng.permutation(idx)[: e["per_class_train"]].tolist())
            keep = sorted(train) if split == "train" else [i for i in range(len(recs)) if i not in train]
            return [recs[i] for i in keep]
        if e.get("derived_label") == "closest_vehicle_distance":
            ds = self._tv()._dataset("all")
            pairs = sorted(zip(ds.images, ds.targets))  # torchvision lists the folder in os.listdir order
            recs = [Record(("file", "all", str(img)), kitti_distance_label(lab)) for img, lab in pairs]
            labels = np.array([r.label for r in recs])
            parts = stratified_split(labels, KITTI_TEST_FRACTION, seed)
            return [recs[i] for i in parts[split]]
        if self.multilabel:
            ds = self._tv()._dataset(split)
            return [Record(("file", split, str(img)), _voc_mask(ann)) for img, ann in zip(ds.images, ds.annotations)]
        return self._tv().records(split)

    def _caltech_files(self) -> list[Record]:
        ds = self._tv()._dataset("all")
        base = Path(ds.root) / "101_ObjectCategories"
        return [
            Record(("file", "all", str(base / ds.categories[y] / f"image_{i:04d}.jpg")), int(y))
            for i, y in zip(ds.index, ds.y)
        ]

    def read(self, record: Record) -> tuple[bytes | np.ndarray, str]:
        return self._tv().read(record)

    def describe(self, record: Record) -> str:
        return str(record.ref[2])


class FolderTransferSource(TransferSource):
    """A registry entry with no torchvision class: ``<root>/<folder>/<class>/<image>`` (RESISC45)."""

    def _folder(self) -> Path:
        folder = self.root / self.entry["folder"] if self.root else None
        if folder is None or not folder.is_dir():
            raise SourceError(f"{self.name}: {str(folder)!r} does not exist. {self.missing_hint}")
        return folder

    def classes(self) -> list[str]:
        return sorted(p.name for p in self._folder().iterdir() if p.is_dir())

    def _all(self) -> list[Record]:
        folder, out = self._folder(), []
        for i, name in enumerate(self.classes()):
            for fn in sorted(os.listdir(folder / name)):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(Record(("file", "all", str(folder / name / fn)), i))
        return out

    def read(self, record: Record) -> tuple[bytes, str]:
        path = record.ref[2]
        with open(path, "rb") as f:
            return f.read(), Path(path).suffix.lstrip(".").lower().replace("jpeg", "jpg")


def _register_all() -> None:
    for name, entry in load_registry().items():
        base = FolderTransferSource if entry.get("class") is None else TransferSource
        hint = f"Download: {entry['download']}. Unpack it under the dataset's root so that it holds {entry['layout']}"
        hint += (
            f"; or set download: true on the dataset to fetch it there (esvit download dataset {name} --root DIR)."
            if entry.get("auto_download")
            else " (esvit/resources/datasets.yaml)."
        )
        doc = f"transfer set: {entry.get('class') or 'image folder'}, {entry['classes']} classes, {entry['metric']}."
        register_source(
            type(f"{name}_source", (base,), {"name": name, "entry": entry, "missing_hint": hint, "doc": doc})
        )


_register_all()
