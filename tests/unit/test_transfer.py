"""The 18 transfer sources, each on a small fake tree in its real on-disk layout (docs/datasets.md §2.4).

Every builder writes the files torchvision (or our folder reader) opens, with two or three classes and a few
images per split; the test lists every split, reads a record, and shards one split. Where torchvision checks
the md5 of the real download (CIFAR, Flowers-102, FER-2013), the check is bypassed for the fake files only.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from esvit.data.shards import ShardConfig, write_shards
from esvit.data.sources import SourceError, get_source
from esvit.data.transfer import VOC_CLASSES, decode_multilabel, kitti_distance_label, load_registry
from tests.conftest import make_jpeg
from tests.conftest import write_idx as _write_idx


def _jpgs(folder: Path, names, seed: int = 0, ext: str = "jpg") -> None:
    for i, name in enumerate(names):
        make_jpeg(folder / f"{name}.{ext}", seed + i, size=(40, 30))


def build_food101(root: Path) -> dict:
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c in ("apple_pie", "bibimbap"):
        _jpgs(base / "images" / c, [f"{i}" for i in range(5)])
        meta["train"][c] = [f"{c}/{i}" for i in range(3)]
        meta["test"][c] = [f"{c}/{i}" for i in range(3, 5)]
    (base / "meta").mkdir()
    for split, m in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(m))
    return {"train": 6, "test": 4}


def _cifar(root: Path, folder: str, files: dict, meta_name: str, meta: dict, label_key: str) -> None:
    base = root / folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in files.items():
        entry = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), label_key: [i % 3 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(entry))
    (base / meta_name).write_bytes(pickle.dumps(meta))


def build_cifar10(root: Path) -> dict:
    files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    _cifar(
        root,
        "cifar-10-batches-py",
        files,
        "batches.meta",
        {"label_names": ["airplane", "automobile", "bird"]},
        "labels",
    )
    return {"train": 10, "test": 3}


def build_cifar100(root: Path) -> dict:
    _cifar(
        root,
        "cifar-100-python",
        {"train": 6, "test": 3},
        "meta",
        {"fine_label_names": ["apple", "bear", "cup"]},
        "fine_labels",
    )
    return {"train": 6, "test": 3}


def build_stanford_cars(root: Path) -> dict:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(
        base / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General Hummer", "Acura RL"], dtype=object)}
    )

    def annos(path: Path, names: list[str]) -> None:
        rec = np.zeros(len(names), dtype=[("fname", object), ("class", np.uint8)])
        for i, n in enumerate(names):
            rec[i] = (n + ".jpg", i % 2 + 1)
        scipy.io.savemat(path, {"annotations": rec})

    tr, te = [f"{i:05d}" for i in range(4)], [f"{i:05d}" for i in range(3)]
    _jpgs(base / "cars_train", tr)
    _jpgs(base / "cars_test", te)
    annos(base / "devkit" / "cars_train_annos.mat", tr)
    annos(base / "cars_test_annos_withlabels.mat", te)
    return {"train": 4, "test": 3}


def build_fgvc_aircraft(root: Path) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A320"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    counts = {"train": 4, "val": 2, "test": 2}
    k = 0
    for split, n in counts.items():
        ids = [f"{1000000 + k + i}" for i in range(n)]
        k += n
        _jpgs(data / "images", ids)
        (data / f"images_variant_{split}.txt").write_text(
            "".join(f"{j} {variants[i % 2]}\n" for i, j in enumerate(ids))
        )
    return counts


def build_voc2007(root: Path) -> dict:
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    counts = {"train": 3, "val": 2, "test": 2}
    k = 0
    for split, n in counts.items():
        ids = [f"{k + i:06d}" for i in range(n)]
        k += n
        _jpgs(voc / "JPEGImages", ids)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, name in enumerate(ids):
            objs = "".join(f"<object><name>{c}</name></object>" for c in (["dog", "person"] if i % 2 else ["car"]))
            (voc / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename>{objs}</annotation>"
            )
    return counts


def build_dtd(root: Path) -> dict:
    data = root / "dtd" / "dtd"
    counts = {"train": 4, "val": 2, "test": 2}
    (data / "labels").mkdir(parents=True)
    lines = {s: [] for s in counts}
    for c in ("banded", "blotchy"):
        names = [f"{c}_{i:04d}" for i in range(4)]
        _jpgs(data / "images" / c, names)
        lines["train"] += [f"{c}/{n}.jpg" for n in names[:2]]
        lines["val"].append(f"{c}/{names[2]}.jpg")
        lines["test"].append(f"{c}/{names[3]}.jpg")
    for s, ls in lines.items():
        (data / "labels" / f"{s}1.txt").write_text("\n".join(ls) + "\n")
    return counts


def build_oxford_pets(root: Path) -> dict:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    rows = {"trainval": [], "test": []}
    for cid, breed in enumerate(("Abyssinian", "american_bulldog"), start=1):
        names = [f"{breed}_{i}" for i in range(1, 5)]
        _jpgs(base / "images", names)
        rows["trainval"] += [f"{n} {cid} 1 1" for n in names[:3]]
        rows["test"] += [f"{n} {cid} 1 1" for n in names[3:]]
    for s, rs in rows.items():
        (base / "annotations" / f"{s}.txt").write_text("\n".join(rs) + "\n")
    return {"train": 6, "test": 2}


def build_caltech101(root: Path) -> dict:
    base = root / "caltech101"
    (base / "Annotations").mkdir(parents=True)
    for c, n in (("accordion", 5), ("airplanes", 6), ("BACKGROUND_Google", 2)):
        _jpgs(base / "101_ObjectCategories" / c, [f"image_{i:04d}" for i in range(1, n + 1)])
    return {"train": 4, "test": 7}  # 2 per class for train (per_class_train overridden below), the rest test


def build_flowers102(root: Path) -> dict:
    base = root / "flowers-102"
    _jpgs(base / "jpg", [f"image_{i:05d}" for i in range(1, 9)])
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([1, 2, 1, 2, 1, 2, 1, 2])})
    scipy.io.savemat(
        base / "setid.mat", {"trnid": np.array([1, 2, 3, 4]), "valid": np.array([5, 6]), "tstid": np.array([7, 8])}
    )
    return {"train": 4, "val": 2, "test": 2}


def build_mnist(root: Path) -> dict:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 3)
    return {"train": 6, "test": 3}


def build_fer2013(root: Path) -> dict:
    base = root / "fer2013"
    base.mkdir()
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for i, usage in enumerate(["Training"] * 5 + ["PublicTest", "PrivateTest"]):
        rows.append(f"{i % 3},{' '.join(map(str, rng.integers(0, 255, 48 * 48)))},{usage}")
    (base / "fer2013.csv").write_text("\n".join(rows) + "\n")
    return {"train": 5, "test": 2}


def build_eurosat(root: Path) -> dict:
    for c in ("AnnualCrop", "Forest", "River"):
        _jpgs(root / "eurosat" / "2750" / c, [f"{c}_{i}" for i in range(4)])
    return {"train": 6, "test": 4}  # sample_sizes below


def build_resisc45(root: Path) -> dict:
    for c in ("airplane", "beach"):
        _jpgs(root / "NWPU-RESISC45" / c, [f"{c}_{i:03d}" for i in range(5)])
    return {"train": 4, "test": 5}


def build_gtsrb(root: Path) -> dict:
    base = root / "gtsrb"
    for c in ("00000", "00001"):
        _jpgs(base / "GTSRB" / "Training" / c, [f"00000_0000{i}" for i in range(3)], ext="ppm")
    _jpgs(base / "GTSRB" / "Final_Test" / "Images", ["00000", "00001"], ext="ppm")
    (base / "GT-final_test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
        "00000.ppm;40;30;1;1;39;29;1\n00001.ppm;40;30;1;1;39;29;0\n"
    )
    return {"train": 6, "test": 2}


KITTI_OBJECTS = {  # label_2 lines: type trunc occl alpha bbox(4) dims(3) location(x y z) rot_y
    0: ["Car 0 0 0 1 1 5 5 1.5 1.6 3.9 1.0 1.5 5.0 0"],  # z 5 m -> < 8 m
    1: ["Pedestrian 0 0 0 1 1 5 5 1.7 0.6 0.8 0 1.5 3.0 0", "Van 0 0 0 1 1 5 5 2 2 5 0 1.5 12.0 0"],  # 8-20 m
    2: ["Truck 0 0 0 1 1 5 5 3 2.5 10 2 1.5 35.0 0", "Car 0 0 0 1 1 5 5 1.5 1.6 3.9 1 1.5 25.0 0"],  # > 20 m
    3: ["Cyclist 0 0 0 1 1 5 5 1.7 0.6 1.8 0 1.5 6.0 0", "DontCare -1 -1 -10 1 1 5 5 -1 -1 -1 -1000 -1000 -1000 -10"],
}


def build_kitti_distance(root: Path) -> dict:
    train = root / "Kitti" / "raw" / "training"
    (train / "label_2").mkdir(parents=True)
    (root / "Kitti" / "raw" / "testing" / "image_2").mkdir(parents=True)
    for i in range(24):
        make_jpeg(train / "image_2" / f"{i:06d}.png", i, size=(40, 30))
        (train / "label_2" / f"{i:06d}.txt").write_text("\n".join(KITTI_OBJECTS[i % 4]) + "\n")
    return {"train": 20, "test": 4}  # 711 / 7481 of 24 -> 2 per class... stratified; checked loosely below


def build_country211(root: Path) -> dict:
    counts = {"train": 4, "val": 2, "test": 2}
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        for c in ("AD", "AE"):
            _jpgs(root / "country211" / folder / c, [f"{c}{split}{i}" for i in range(counts[split] // 2)])
    return counts


def build_pcam(root: Path) -> dict:
    import h5py

    base = root / "pcam"
    base.mkdir()
    rng = np.random.default_rng(0)
    counts = {"train": 4, "val": 2, "test": 2}
    for split, n in counts.items():
        name = {"val": "valid"}.get(split, split)
        with h5py.File(base / f"camelyonpatch_level_2_split_{name}_x.h5", "w") as f:
            f["x"] = rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8)
        with h5py.File(base / f"camelyonpatch_level_2_split_{name}_y.h5", "w") as f:
            f["y"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
    return counts


BUILDERS = {name[len("build_") :]: fn for name, fn in globals().items() if name.startswith("build_")}
OPTIONS = {  # fake trees are tiny: smaller samples than the protocol's
    "eurosat": {"sample_sizes": {"train": 6, "test": 4}},
    "resisc45": {"sample_sizes": {"train": 4, "test": 5}},
}


@pytest.fixture
def no_md5(monkeypatch):
    """The fake files cannot have the real downloads' md5; bypass only that check."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.fer2013 as fer
    import torchvision.datasets.flowers102 as flowers

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(flowers, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(fer, "check_integrity", lambda *a, **k: True)


def test_every_registry_entry_has_a_fake_tree_test():
    assert set(BUILDERS) == set(load_registry())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_source_reads_its_real_layout(name, tmp_path, no_md5, monkeypatch):
    entry = load_registry()[name]
    expected = BUILDERS[name](tmp_path)
    if name == "caltech101":
        monkeypatch.setitem(entry, "per_class_train", 2)
    src = get_source(name, str(tmp_path), OPTIONS.get(name))
    classes = src.classes()
    assert len(classes) >= 2
    for split in src.split_names(None):
        recs = src.records(split)
        if name == "kitti_distance":
            assert len(recs) in range(1, 24)
        else:
            assert len(recs) == expected[split], (split, len(recs))
        if entry.get("multilabel"):
            assert all(0 < r.label < 2 ** len(VOC_CLASSES) for r in recs)
        else:
            assert all(0 <= r.label < len(classes) for r in recs)
        data, ext = src.read(recs[0])
        assert ext in ("jpg", "png", "ppm") and (len(data) > 0 if isinstance(data, bytes) else data.dtype == np.uint8)
    if name in ("eurosat", "resisc45", "caltech101", "kitti_distance"):  # derived splits are disjoint, complete
        train, test = ({r.ref for r in src.records(s)} for s in ("train", "test"))
        assert not train & test


@pytest.mark.parametrize("name", ["voc2007", "kitti_distance", "cifar10", "food101"])
def test_transfer_sets_shard(name, tmp_path, no_md5):
    BUILDERS[name](tmp_path / "raw")
    src = get_source(name, str(tmp_path / "raw"), OPTIONS.get(name))
    manifest = write_shards(src, name, "train", tmp_path / "shards", ShardConfig(workers=1), progress=False)
    assert manifest["total"] == len(src.records("train"))
    assert manifest["multilabel"] == (name == "voc2007")


def test_voc_labels_are_the_annotated_sets(tmp_path):
    build_voc2007(tmp_path)
    recs = get_source("voc2007", str(tmp_path)).records("train")
    hot = decode_multilabel([r.label for r in recs], len(VOC_CLASSES))
    names = [{VOC_CLASSES[c] for c in np.flatnonzero(h)} for h in hot]
    assert names == [{"car"}, {"dog", "person"}, {"car"}]


@pytest.mark.parametrize("label", sorted(KITTI_OBJECTS))
def test_kitti_distance_bins(label, tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("\n".join(KITTI_OBJECTS[label]) + "\n")
    assert kitti_distance_label(f) == label


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_missing_raw_files_say_what_to_download(name, tmp_path):
    entry = load_registry()[name]
    with pytest.raises(SourceError) as err:
        get_source(name, str(tmp_path), OPTIONS.get(name)).records("train")
    msg = str(err.value)
    assert entry["download"] in msg and entry["layout"] in msg and str(tmp_path) in msg, msg
