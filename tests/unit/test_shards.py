"""Shard writer and verifier: contract, determinism, limits, bad images, atomicity and resume."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esvit.data.shards import ShardConfig, ShardError, check_image, verify_shards, write_shards
from esvit.data.sources import Record, Source, get_source
from tests.conftest import make_jpeg, require_fashion_mnist, run_cli


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    manifest = json.loads((out / "manifest.json").read_text())
    merged = {}
    for s in manifest["shards"]:
        merged.update(read_tar(out / s["name"]))
    return merged


def test_round_trip_contract(digits_shards):
    """Every record once; PNG decodes to the original array; labels and the manifest match."""
    src = get_source("digits")
    images, labels = src._cached()["train"]
    manifest = json.loads((digits_shards / "manifest.json").read_text())
    samples = all_samples(digits_shards)
    assert manifest["total"] == len(samples) == len(images)
    assert manifest["classes"] == [str(i) for i in range(10)] and manifest["num_classes"] == 10
    for s in manifest["shards"]:
        assert s["count"] <= 150 and (digits_shards / s["name"]).stat().st_size == s["bytes"]
        assert s["name"].startswith("digits-train-") and s["name"].endswith(".tar")
    for key, sample in samples.items():
        i = int(key)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), images[i])
        assert int(sample["cls"]) == labels[i]
    assert manifest["tool"].startswith("esvit ") and manifest["source"]["name"] == "digits"


def test_shards_mix_classes(digits_shards):
    manifest = json.loads((digits_shards / "manifest.json").read_text())
    for s in manifest["shards"]:
        labels = [int(v["cls"]) for v in read_tar(digits_shards / s["name"]).values()]
        assert len(set(labels)) >= 8, f"{s['name']} holds only classes {sorted(set(labels))}"


def test_deterministic_byte_identical_across_worker_counts(tmp_path):
    src = get_source("digits")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_shards(src, "digits", "test", a, ShardConfig(max_samples=100, workers=1), progress=False)
    write_shards(src, "digits", "test", b, ShardConfig(max_samples=100, workers=2), progress=False)
    write_shards(src, "digits", "test", c, ShardConfig(max_samples=100, workers=2, seed=1), progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    assert (a / names[0]).read_bytes() != (c / names[0]).read_bytes()  # the seed matters


def _jpeg_folder(root: Path, n_per_class: int = 6, classes: int = 3) -> dict[str, bytes]:
    files = {}
    for c in range(classes):
        for i in range(n_per_class):
            p = root / "train" / f"class{c}" / f"img{i}.jpg"
            files[str(p)] = make_jpeg(p, seed=c * 100 + i, size=(96, 80))
    return files


def test_jpegs_are_copied_not_reencoded_and_byte_limit_holds(tmp_path):
    files = _jpeg_folder(tmp_path / "img")
    src = get_source("image_folder", str(tmp_path / "img"))
    by_key = {f"{i:09d}": r.ref for i, r in enumerate(src.records("train"))}
    max_bytes = 40_000
    out = tmp_path / "out"
    manifest = write_shards(
        src, "toy", "train", out, ShardConfig(max_samples=100, max_mb=max_bytes / 1e6, workers=2), progress=False
    )
    assert len(manifest["shards"]) > 1
    for s in manifest["shards"]:
        assert (out / s["name"]).stat().st_size <= max_bytes
    samples = all_samples(out)
    assert len(samples) == len(files)
    for key, sample in samples.items():
        assert sample["jpg"] == files[by_key[key]]


def test_check_image_modes(tmp_path):
    good = make_jpeg(tmp_path / "a.jpg", seed=0)
    assert check_image(good, "jpg", "header") is None and check_image(good, "jpg", "decode") is None
    assert "truncated" in check_image(good[: len(good) // 2], "jpg", "header")
    assert check_image(good[: len(good) // 2], "jpg", "decode") is not None
    assert check_image(b"definitely not an image", "jpg", "header") is not None
    assert check_image(b"", "jpg", "header") == "empty file"
    assert check_image(b"garbage", "jpg", "none") is None


def test_bad_images_are_skipped_counted_and_named(tmp_path):
    files = _jpeg_folder(tmp_path / "img", n_per_class=10)
    paths = sorted(files)
    Path(paths[3]).write_bytes(files[paths[3]][:500])  # truncated
    Path(paths[7]).write_bytes(b"\x00" * 100)  # garbage
    src = get_source("image_folder", str(tmp_path / "img"))
    out = tmp_path / "out"
    with pytest.raises(ShardError, match=r"2 of 30 images are unreadable .* max_bad_fraction"):
        write_shards(src, "toy", "train", out, ShardConfig(workers=2), progress=False)
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    manifest = write_shards(src, "toy", "train", out, ShardConfig(workers=2, max_bad_fraction=0.1), progress=False)
    assert manifest["bad_count"] == 2 and manifest["total"] == 28
    named = {b["item"] for b in manifest["bad"]}
    assert named == {paths[3], paths[7]}
    assert all(b["reason"] for b in manifest["bad"])
    assert not verify_shards(out)


class _Exploding(Source):
    """Wraps a source and raises after ``limit`` reads: a stand-in for a job killed mid-run."""

    name = "exploding"
    needs_root = False

    def __init__(self, inner: Source, limit: int):
        super().__init__(None)
        self.inner, self.limit, self.reads = inner, limit, 0

    def classes(self):
        return self.inner.classes()

    def records(self, split):
        return self.inner.records(split)

    def read(self, record: Record):
        self.reads += 1
        if self.reads > self.limit:
            raise KeyboardInterrupt
        return self.inner.read(record)


def test_interrupted_run_leaves_nothing_complete_and_rerun_finishes(tmp_path):
    inner = get_source("digits")
    settings = ShardConfig(max_samples=100, workers=1)
    ref, out = tmp_path / "ref", tmp_path / "out"
    write_shards(inner, "digits", "test", ref, settings, progress=False)
    with pytest.raises(KeyboardInterrupt):
        write_shards(_Exploding(inner, limit=250), "digits", "test", out, settings, progress=False)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("digits-test-*.tar"))  # nothing under a final name
    assert sorted(p.name for p in (out / ".work").glob("chunk-*.json")) == ["chunk-000000.json", "chunk-000001.json"]
    resumed = _Exploding(inner, limit=10**9)
    write_shards(resumed, "digits", "test", out, settings, progress=False)
    assert resumed.reads == 359 - 200  # finished chunks were not redone
    for p in ref.glob("*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert not (out / ".work").exists()


def test_verify_catches_a_flipped_byte_a_truncation_and_an_extra_file(tmp_path, digits_shards):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(digits_shards, out)
    assert run_cli("shard", "--verify", str(out)).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    victim = out / manifest["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0x01
    victim.write_bytes(bytes(data))
    proc = run_cli("shard", "--verify", str(out))
    assert proc.returncode == 1 and victim.name in proc.stderr and "sha256" in proc.stderr
    victim.write_bytes(bytes(data[:-512]))
    assert any(victim.name in p and "bytes" in p for p in verify_shards(out))
    (out / "stray-000000.tar").write_bytes(b"")
    assert any("stray-000000.tar: not listed" in p for p in verify_shards(out))
    (out / "manifest.json").unlink()
    proc = run_cli("shard", "--verify", str(out))
    assert proc.returncode == 1 and "manifest.json" in proc.stderr


def test_cli_summary_line_and_unknown_dataset(tmp_path):
    proc = run_cli(
        "shard",
        "--dataset",
        "digits",
        "--split",
        "test",
        "--out",
        str(tmp_path / "d"),
        "--no-progress",
        f"data_dir={tmp_path}",
        "datasets.fashion_mnist.root=null",
        check=False,
    )
    if proc.returncode == 2 and "fashion" in proc.stderr:  # without the Debian package the default config is invalid
        require_fashion_mnist()
    assert proc.returncode == 0, proc.stderr
    assert "digits/test: 359 images, 1 shards" in proc.stdout and "images/s" in proc.stdout
    proc = run_cli("shard", "--dataset", "mnist5", "--config", "configs/config.yaml")
    assert proc.returncode == 2 and "Did you mean 'mnist5k'" in proc.stderr
