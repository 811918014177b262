"""Data sources: each lists its records deterministically and reads them unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from esvit.config import ConfigError, load_config
from esvit.data.sources import SOURCES, SourceError, get_source, stratified_split
from tests.conftest import FASHION_ROOT, make_jpeg, require_fashion_mnist
from tests.conftest import write_idx as _write_idx


def test_registry_has_the_required_sources():
    assert {"image_folder", "torchvision", "fashion_mnist", "mnist5k", "digits"} <= set(SOURCES)


def test_image_folder_lists_the_imagenet_layout_and_returns_bytes_unchanged(tmp_path):
    files = {}
    for split in ("train", "val"):
        for c, cls in enumerate(["n01440764", "n01443537", "n01484850"]):
            for i in range(3 if split == "train" else 1):
                p = tmp_path / split / cls / f"{cls}_{i}.JPEG"
                files[str(p)] = (make_jpeg(p, seed=100 * c + i), c)
    (tmp_path / "train" / "n01440764" / "notes.txt").write_text("not an image")
    src = get_source("image_folder", str(tmp_path))
    assert src.classes() == ["n01440764", "n01443537", "n01484850"]
    recs = src.records("train")
    assert len(recs) == 9 and [r.label for r in recs] == sorted(r.label for r in recs)
    for r in recs + src.records("val"):
        data, ext = src.read(r)
        assert ext == "jpg" and data == files[r.ref][0] and r.label == files[r.ref][1]


def test_stratified_split_is_disjoint_complete_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_split(labels, 0.2, seed=3)
    b = stratified_split(labels, 0.2, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.intersect1d(a["train"], a["test"]).size == 0
    assert len(a["train"]) + len(a["test"]) == 500
    assert np.bincount(labels[a["test"]]).tolist() == [10] * 10


@pytest.mark.parametrize("name,n,shape", [("digits", 1797, (8, 8)), ("mnist5k", 5000, (28, 28))])
def test_packaged_digit_sources(name, n, shape):
    src = get_source(name)
    train, test = src.records("train"), src.records("test")
    assert len(train) + len(test) == n and abs(len(test) - 0.2 * n) <= 10
    img, ext = src.read(train[0])
    assert ext == "png" and img.dtype == np.uint8 and img.shape == shape and img.max() > 100
    assert sorted({r.label for r in test}) == list(range(10))


def test_fashion_mnist_from_the_debian_package(tmp_path):
    require_fashion_mnist()
    src = get_source("fashion_mnist", str(FASHION_ROOT), cache_dir=str(tmp_path))
    assert len(src.records("train")) == 60000 and len(src.records("test")) == 10000
    assert src.classes()[0] == "T-shirt/top" and len(src.classes()) == 10
    img, _ = src.read(src.records("test")[0])
    assert img.shape == (28, 28) and img.dtype == np.uint8
    # decompressed once, in torchvision's layout
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_fashion_mnist_missing_package_says_what_to_install(tmp_path):
    cfg = {"datasets": {"fm": {"source": "fashion_mnist", "root": str(tmp_path)}}}
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        load_config(cfg)


def test_torchvision_array_dataset_in_its_real_layout(tmp_path):
    """MNIST's raw idx files, laid out as torchvision expects, read with download=False."""
    digits = get_source("mnist5k")
    imgs, labels = digits._cached()["train"]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 100), ("t10k", 30)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs[:n])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[:n])
    opts = {"class": "MNIST", "splits": {"train": {"train": True}, "test": {"train": False}}}
    cfg = load_config({"datasets": {"mnist": {"source": "torchvision", "root": str(tmp_path), "options": opts}}})
    ds = cfg.datasets["mnist"]
    src = get_source(ds.source, ds.root, ds.options)
    recs = src.records("train")
    assert len(recs) == 100 and len(src.records("test")) == 30
    img, ext = src.read(recs[7])
    assert ext == "png" and np.array_equal(img, imgs[7]) and recs[7].label == labels[7]


def test_torchvision_file_dataset_is_copied_unchanged(tmp_path):
    """EuroSAT (an ImageFolder under root/eurosat/2750) keeps its JPEG bytes."""
    originals = {}
    for c, cls in enumerate(["AnnualCrop", "Forest"]):
        for i in range(2):
            p = tmp_path / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg"
            originals[str(p)] = make_jpeg(p, seed=10 * c + i)
    src = get_source("torchvision", str(tmp_path), {"class": "EuroSAT", "splits": {"train": {}}})
    recs = src.records("train")
    assert [r.label for r in recs] == [0, 0, 1, 1] and src.classes() == ["AnnualCrop", "Forest"]
    for r in recs:
        data, ext = src.read(r)
        assert ext == "jpg" and data == originals[r.ref[2]]


def test_torchvision_missing_files_say_where(tmp_path):
    src = get_source("torchvision", str(tmp_path), {"class": "MNIST", "splits": {"train": {"train": True}}})
    with pytest.raises(SourceError, match="MNIST not found under"):
        src.records("train")


def test_transfer_registry_matches_the_reference_table():
    import csv

    import yaml

    from tests.conftest import REPO

    registry = yaml.safe_load((REPO / "esvit/resources/datasets.yaml").read_text())
    rows = {r["key"]: r for r in csv.DictReader((REPO / "esvit/resources/transfer_datasets.csv").open())}
    assert set(registry) == set(rows) and len(registry) == 18
    import torchvision.datasets as tvd

    for key, entry in registry.items():
        assert entry["classes"] == int(rows[key]["num_classes"]), key
        assert entry["metric"] == rows[key]["metric"], key
        assert entry["class"] is None or hasattr(tvd, entry["class"]), key
        assert entry["layout"] and entry["download"], key


def test_a_reader_that_leaves_early_ends_the_listing_quietly():
    """`esvit sources | head -1`: the reader is gone before the listing is written; no traceback, exit 0."""
    import subprocess
    import sys

    from tests.conftest import REPO, env_with_python

    proc = subprocess.Popen(
        [sys.executable, "-m", "esvit", "sources"],
        cwd=REPO,
        env=env_with_python(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the child has imported anything: its first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
