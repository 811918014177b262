"""Faults reproduced for real — damaged features, a diverged checkpoint, bad command lines — each must stop
with one line naming the file or key and what to do, never give a wrong number with exit code 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from esvit.data.shards import verify_shards
from tests.conftest import REPO, env_with_python, require_fashion_mnist, run_cli


@pytest.fixture(scope="module")
def caches(digits_shards, tmp_path_factory):
    """Real feature caches of the digits train split (random-init swin_pico at 32 px): a good one to damage."""
    d = tmp_path_factory.mktemp("feats")
    proc = run_cli(
        "extract",
        "--random-init",
        "--arch",
        "swin_pico",
        "--shards",
        str(digits_shards),
        "--out",
        str(d / "train.pt"),
        "--image-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    return d


def damaged(caches, tmp_path, how: str):
    data = torch.load(caches / "train.pt", weights_only=True)
    if how == "nan row":
        data["pooled"][7, 3] = float("nan")
        data["last_blocks"][7, 3] = float("nan")
    elif how == "fewer features":
        data["pooled"], data["last_blocks"] = data["pooled"][:1433], data["last_blocks"][:1433]
    elif how == "other width":
        data["pooled"], data["last_blocks"] = data["pooled"][:, :100], data["last_blocks"][:, :100]
    elif how == "empty":
        data["pooled"], data["last_blocks"], data["labels"], data["keys"] = (
            data["pooled"][:0],
            data["last_blocks"][:0],
            data["labels"][:0],
            [],
        )
    elif how == "one class":
        data["labels"] = torch.zeros_like(data["labels"])
    path = tmp_path / f"{how.replace(' ', '_')}.pt"
    torch.save(data, path)
    return path, data


CASES = [
    ("nan row", "non-finite features, first at sample 7 ("),
    ("fewer features", "1433 features but 1438 labels"),
    ("empty", "no samples"),
    ("one class", "labels of only 1 class"),
]


@pytest.mark.parametrize("how,message", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["knn", "probe", "linear"])
def test_bad_features_stop_every_evaluation_with_one_line(caches, tmp_path, how, message, command):
    bad, data = damaged(caches, tmp_path, how)
    out = tmp_path / "m.json"
    extra = ["--epochs", "1", "--no-progress"] if command == "linear" else []
    proc = run_cli(
        command,
        "--train",
        str(bad),
        "--test",
        str(caches / "train.pt"),
        "--out",
        str(out),
        "--run",
        "r",
        "--dataset",
        "digits",
        *extra,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and message in err[0] and str(bad) in err[0], proc.stderr[-2000:]
    assert not out.exists()
    if how == "nan row":
        assert data["keys"][7] in err[0]  # the sample, by its key


def test_train_and_test_of_different_widths_are_refused(caches, tmp_path):
    bad, _ = damaged(caches, tmp_path, "other width")
    proc = run_cli(
        "knn",
        "--train",
        str(caches / "train.pt"),
        "--test",
        str(bad),
        "--out",
        str(tmp_path / "m.json"),
        "--run",
        "r",
        "--dataset",
        "digits",
    )
    assert proc.returncode == 1 and "have 100 dimensions, the train features 192" in proc.stderr, proc.stderr


def test_a_diverged_checkpoint_stops_extraction_naming_it_and_the_sample(digits_shards, tmp_path):
    """A real checkpoint with a NaN weight: extraction stops, names the checkpoint and the first sample, and
    caches nothing (a NaN row would drop k-NN from ~97 % to ~10 % with exit code 0)."""
    from tests.conftest import TINY

    run = tmp_path / "run"
    assert (
        run_cli(
            "pretrain", "--shards", str(digits_shards), "--out", str(run), "--no-progress", *TINY, "run.max_steps=1"
        ).returncode
        == 0
    )
    from esvit.checkpoint_file import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "final.pth")
    ckpt["teacher"]["backbone.net.norm.weight"][0] = float("nan")
    save_checkpoint(tmp_path / "nan.pth", ckpt)
    proc = run_cli(
        "extract",
        "--checkpoint",
        str(tmp_path / "nan.pth"),
        "--shards",
        str(digits_shards),
        "--out",
        str(tmp_path / "f.pt"),
        "--workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 1 and "nan.pth gives non-finite pooled features for sample 0" in proc.stderr, proc.stderr
    assert not (tmp_path / "f.pt").exists()
    # features beyond float16's range are cached in float32, not as inf
    ckpt["teacher"]["backbone.net.norm.weight"].fill_(1e6)
    save_checkpoint(tmp_path / "big.pth", ckpt)
    proc = run_cli(
        "extract",
        "--checkpoint",
        str(tmp_path / "big.pth"),
        "--shards",
        str(digits_shards),
        "--out",
        str(tmp_path / "big.pt"),
        "--workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    feats = torch.load(tmp_path / "big.pt", weights_only=True)["pooled"]
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all() and feats.abs().max() > 65504


BAD_COMMAND_LINES = [
    (
        ["knn", "--train", "a", "--test", "b", "--out", "c", "--run", "r", "--dataset", "d", "--ks", "0"],
        "argument --ks: every k must be >= 1",
    ),
    (
        ["knn", "--train", "a", "--test", "b", "--out", "c", "--run", "r", "--dataset", "d", "--temperature", "0"],
        "argument --temperature: must be > 0",
    ),
    (
        ["extract", "--random-init", "--arch", "swin_pico", "--shards", "s", "--out", "o", "--image-size", "0"],
        "argument --image-size: must be > 0",
    ),
    (
        ["extract", "--random-init", "--arch", "swin_pico", "--shards", "s", "--out", "o", "--workers", "-3"],
        "argument --workers: must be >= 0",
    ),
    (["shard", "--dataset", "digits", "--workers", "0"], "argument --workers: must be > 0"),
    (["extract", "--random-init", "--shards", "s", "--out", "o"], "a random-init baseline needs --arch"),
    (
        ["pretrain", "--shards", "s", "--out", "o", "optim.warmup_epochs=400"],
        "optim.warmup_epochs 400 is longer than optim.epochs 300",
    ),
    (["pretrain", "--shards", "s", "--out", "o", "crops.global_size=3"], "needs crops of at least 4 px"),
    (
        ["pretrain", "--shards", "s", "--out", "o", "crops.local_size=[300]"],
        "crops.local_size [300] is larger than crops.global_size 224",
    ),
    (["pretrain", "optim.lr=-1", "--out", "o", "optim.epochs=2"], "optim.lr must be > 0"),
]


@pytest.mark.parametrize(
    "argv,message", BAD_COMMAND_LINES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_COMMAND_LINES]
)
def test_bad_command_lines_get_one_line_naming_the_option_or_key(argv, message, tmp_path):
    proc = run_cli(*argv, cwd=None)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]  # (argparse prints its usage lines first)
    assert proc.returncode in (1, 2) and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_override_after_an_option_is_an_override(digits_shards, tmp_path):
    from tests.conftest import TINY

    proc = run_cli(
        "pretrain",
        "--shards",
        str(digits_shards),
        *TINY[:4],
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        *TINY[4:],
        "run.max_steps=1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_steps: 1" in (tmp_path / "r" / "config.yaml").read_text()
    assert json.loads((tmp_path / "r" / "done.json").read_text())["global_step"] == 1


def test_shard_out_without_split_writes_every_split_under_it_and_nothing_else(tmp_path):
    """`esvit shard --dataset digits --out X` used to ignore X and rewrite the default data/shards/digits/*."""
    from esvit.data.shards import verify_shards
    from tests.conftest import REPO

    default = REPO / "data" / "shards" / "digits"
    before = {p: p.stat().st_mtime_ns for p in default.rglob("*")} if default.exists() else None
    proc = run_cli("shard", "--dataset", "digits", "--out", str(tmp_path / "X"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "test"):
        assert verify_shards(tmp_path / "X" / split) == []
    after = {p: p.stat().st_mtime_ns for p in default.rglob("*")} if default.exists() else None
    assert after == before  # the default shard folders are untouched


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """A real 16-bit grey PNG (576 levels between 1,000 and 60,000) in an image folder, sharded and read back by
    the evaluation reader and the training augmentation: the grey levels are value / 257, not clipped to 255."""
    import numpy as np
    from PIL import Image

    from esvit.data.multicrop import FastMultiCrop
    from esvit.data.pipeline import eval_pipeline, make_loader, open_shards
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source

    levels = np.linspace(1000, 60000, 576).round().astype(np.uint16)
    arr = np.tile(levels, (24, 1))  # 24 x 576
    for split in ("train",):
        d = tmp_path / "root" / split / "scan"
        d.mkdir(parents=True)
        Image.fromarray(arr).save(d / "a.png")  # mode I;16
    assert Image.open(d / "a.png").mode in ("I;16", "I")
    write_shards(
        get_source("image_folder", str(tmp_path / "root")),
        "scans",
        "train",
        tmp_path / "shards",
        ShardConfig(workers=1),
        progress=False,
    )
    as_array = lambda img: torch.from_numpy(np.asarray(img).copy())  # noqa: E731
    ((_, images, _),) = list(make_loader(eval_pipeline(open_shards(tmp_path / "shards"), as_array, 4), 0))
    want = torch.from_numpy(np.rint(levels / 257.0).astype(np.int64))
    assert torch.equal(images[0][0, :, 0].long(), want), (images[0][0, :8, 0], want[:8])
    assert len(torch.unique(images[0][..., 0])) > 200  # not 4 near-white levels
    crops, _ = FastMultiCrop(32, (0.9, 1.0), [0], [16], (0.05, 0.4), draft=False)((d / "a.png").read_bytes())
    assert crops[0].float().mean() < 200  # the training crops too (clipping made them ~255)


@pytest.mark.parametrize("check", ["header", "decode"])
def test_the_header_check_agrees_with_decoding_on_real_jpegs(tmp_path, check):
    """A JPEG with bytes after its end marker (as cameras write) is valid for both checks; one cut before its
    end is invalid for both; an EXIF thumbnail's own end marker does not make a cut file pass."""
    import io

    from PIL import Image

    from esvit.data.shards import check_image
    from tests.conftest import make_jpeg

    good = make_jpeg(tmp_path / "a.jpg", seed=1, size=(64, 48))
    thumb = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(thumb, format="JPEG")
    exif = Image.Exif()
    exif[0x010E] = "a camera"
    with_thumb = io.BytesIO()
    img = Image.open(io.BytesIO(good))
    img.save(with_thumb, format="JPEG", exif=exif.tobytes() + thumb.getvalue())  # an FFD9 inside APP1
    cases = {
        "plain": (good, None),
        "trailing bytes": (good + b"\x00\x00extra data from the camera" * 20, None),
        "thumbnail, whole": (with_thumb.getvalue(), None),
        "cut in the scan": (good[: len(good) * 2 // 3], "truncated"),
        "thumbnail, cut": (with_thumb.getvalue()[:-200], "truncated"),
    }
    for name, (data, expected) in cases.items():
        verdict = check_image(data, "jpg", check)
        if expected is None:
            assert verdict is None, (name, verdict)
        else:
            assert verdict is not None, name


@pytest.mark.parametrize("command", ["pretrain", "shard", "extract"])
def test_a_second_process_on_the_same_folder_stops_naming_the_holder(command, digits_shards, tmp_path, monkeypatch):
    """This test process holds the lock as a running job would (pid, host, Slurm job id written); a real second
    `esvit` process on the same output stops at once with one line naming it, and writes nothing there."""
    from esvit.lock import RunLock
    from tests.conftest import TINY

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    out = tmp_path / "out"
    argv = {
        "pretrain": [
            "pretrain",
            "--shards",
            str(digits_shards),
            "--out",
            str(out),
            "--no-progress",
            *TINY,
            "run.max_steps=1",
        ],
        "shard": ["shard", "--dataset", "digits", "--split", "test", "--out", str(out), "--no-progress"],
        "extract": [
            "extract",
            "--random-init",
            "--arch",
            "swin_pico",
            "--shards",
            str(digits_shards),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--workers",
            "0",
            "--no-progress",
        ],
    }[command]
    with RunLock(out, "x", folder=command != "extract"):
        monkeypatch.setenv("SLURM_JOB_ID", "4243")  # the second process belongs to another job
        proc = run_cli(*argv)
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-2000:]
    assert f"is in use by pid {__import__('os').getpid()} on" in err[0] and "Slurm job 4242" in err[0], err
    assert (
        not (out / "checkpoint.pth").exists()
        and not (out / "manifest.json").exists()
        and not out.with_suffix(".pt").exists()
    )
    assert run_cli(*argv).returncode == 0  # free again: it runs
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with RunLock(out, "x", folder=command != "extract"):  # a requeued attempt of the holder's own job takes over
        taken = run_cli(*argv)
    assert taken.returncode == 0 and "locked by an earlier attempt of this Slurm job" in taken.stderr, taken.stderr[
        -1500:
    ]


def test_a_changed_training_config_refuses_to_resume_and_restart_keeps_the_old_run(digits_shards, tmp_path):
    """Changing optim.lr of a finished run used to 'resume' with 0 steps and write final.pth with the old weights
    under the new config. Now the resume names the differing keys; --restart starts afresh and keeps the old run;
    keys that may change (optim.epochs to extend a run, logging) still resume."""
    from tests.conftest import TINY

    run = tmp_path / "run"
    base = ["pretrain", "--shards", str(digits_shards), "--out", str(run), "--no-progress", *TINY, "data.num_workers=0"]
    assert run_cli(*base).returncode == 0
    proc = run_cli(*base, "optim.lr=0.004", "run.seed=3")
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-2000:]
    assert "optim.lr: 0.002 -> 0.004; run.seed: 0 -> 3" in err[0] and "--restart" in err[0]
    assert "lr: 0.002" in (run / "config.yaml").read_text()  # the record still says what trained
    longer = run_cli(*base, "optim.epochs=3", "run.log_every_steps=1")  # an allowed change: it resumes and extends
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert json.loads((run / "done.json").read_text())["epochs"] == 3
    fresh = run_cli(*base, "optim.lr=0.004", "--restart")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(kept) == 1 and (kept[0] / "final.pth").exists() and "lr: 0.004" in (run / "config.yaml").read_text()


def _copy_shards(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _flip(path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _member_offset(tar_path, suffix: str, nth: int = 5) -> tuple[int, int]:
    """(header offset, data offset) of the nth member ending in ``suffix`` of a real tar."""
    import tarfile

    with tarfile.open(tar_path) as tf:
        members = [m for m in tf.getmembers() if m.name.endswith(suffix)]
        return members[nth].offset, members[nth].offset_data


@pytest.mark.parametrize("damage", ["tar header", "label byte"])
def test_a_damaged_shard_stops_training_and_extraction_naming_it(digits_shards, tmp_path, damage):
    """One flipped byte in a real shard: a tar header (readers used to stop there and train on the first 50 of
    ~150 samples with exit code 0) or a `.cls` label (silently another label). Both readers check every shard
    against its manifest while streaming (count, sha256) and stop, naming the shard and `esvit shard --verify`."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import TINY

    shards = tmp_path / "shards"  # one shard, so the resampling training reader surely reads it
    write_shards(
        get_source("digits"), "digits", "train", shards, ShardConfig(max_samples=2000, workers=1), progress=False
    )
    tar = sorted(shards.glob("*.tar"))[0]
    header, data = _member_offset(tar, ".cls", nth=50)
    if damage == "tar header":
        _flip(tar, header + 10)  # a byte of the member's name: the header checksum no longer matches
    else:
        _flip(tar, data, 0x01)  # its label digit, e.g. "3" -> "2": still a valid label
    assert tar.stat().st_size == json.loads((shards / "manifest.json").read_text())["shards"][0]["bytes"]
    train = run_cli(
        "pretrain",
        "--shards",
        str(shards),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        *TINY,
        "data.samples_per_epoch=1600",
        "data.num_workers=1",
        "optim.epochs=1",
    )  #  (one full read)
    extract = run_cli(
        "extract",
        "--random-init",
        "--arch",
        "swin_pico",
        "--shards",
        str(shards),
        "--out",
        str(tmp_path / "f.pt"),
        "--image-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
    )
    for proc in (train, extract):
        err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert proc.returncode == 1 and len(err) == 1, proc.stderr[-3000:]
        assert f"shard {tar} is damaged" in err[0] and f"esvit shard --verify {shards}" in err[0], err
        assert "ShardError" not in err[0]  # a loader worker's error, unwrapped to its own message
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "final.pth").exists() and not (tmp_path / "f.pt").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_corrupt_image_inside_a_consistent_shard_is_named_or_skipped(tmp_path, policy):
    """A shard set written with shard.check=none holds a JPEG cut in half (its manifest is consistent): training
    names the shard and the image's key and stops, or with data.on_bad_image=skip logs it and goes on."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import TINY, make_jpeg

    root = tmp_path / "photos" / "train"
    for i in range(40):
        make_jpeg(root / f"c{i % 2}" / f"{i:03d}.jpg", seed=i, size=(40, 40))
    cut = root / "c1" / "007.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    write_shards(
        get_source("image_folder", str(tmp_path / "photos")),
        "photos",
        "train",
        tmp_path / "shards",
        ShardConfig(workers=1, check="none"),
        progress=False,
    )
    proc = run_cli(
        "pretrain",
        "--shards",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        *TINY,
        "data.samples_per_epoch=40",
        "optim.batch_size_per_device=8",
        "optim.epochs=2",
        "data.num_workers=0",
        f"data.on_bad_image={policy}",
    )
    if policy == "stop":
        err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert (
            proc.returncode == 1 and len(err) == 1 and "does not decode" in err[0] and "on_bad_image=skip" in err[0]
        ), proc.stderr[-2000:]
        assert "photos-train-" in err[0] or "007" in err[0] or "image " in err[0]
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "skipped: image" in proc.stderr and "data.on_bad_image=skip" in proc.stderr


def test_no_room_for_a_checkpoint_says_so_in_one_line_and_leaves_nothing_half_written(digits_shards, tmp_path):
    """A real write failure: the pretraining process runs under a 3 MB file-size limit (`ulimit -f`), smaller
    than its first checkpoint. torch.save used to fail with "unexpected pos"; now the message names the file and
    the limit, and no partial checkpoint or temp file is left."""
    import resource
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, TINY, env_with_python

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))

    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "esvit",
            "pretrain",
            "--shards",
            str(digits_shards),
            "--out",
            str(run),
            "--no-progress",
            *TINY,
            "run.max_steps=2",
            "data.num_workers=0",
        ],
        cwd=REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-2000:]
    assert f"cannot write {run / 'checkpoint.pth'}: the file-size limit of this process is reached" in err[0], err
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name or ".tmp" in p.name) == []


@pytest.mark.parametrize(
    "change,named",
    [
        ("model.arch=swin_nano", "model.arch: swin_pico -> swin_nano"),
        ("model.out_dim=512", "model.out_dim: 256 -> 512"),
    ],
)
def test_resuming_with_another_network_names_the_difference_instead_of_a_size_mismatch(
    digits_shards, tmp_path, change, named
):
    from tests.conftest import TINY

    base = [
        "pretrain",
        "--shards",
        str(digits_shards),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        *TINY,
        "data.num_workers=0",
        "run.checkpoint_every_steps=1",
    ]
    assert run_cli(*base, "run.max_steps=1").returncode == 0
    proc = run_cli(*base, change)
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1 and named in err[0] and "size mismatch" not in proc.stderr, (
        proc.stderr[-2000:]
    )


def test_a_corrupt_image_stops_extraction_naming_shard_and_key(tmp_path):
    """webdataset's decoder used to raise a DecodingError with no text; the evaluation reader names the image."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import make_jpeg

    root = tmp_path / "photos" / "test"
    for i in range(6):
        make_jpeg(root / "c" / f"{i}.jpg", seed=i, size=(40, 40))
    (root / "c" / "3.jpg").write_bytes((root / "c" / "3.jpg").read_bytes()[:200])
    write_shards(
        get_source("image_folder", str(tmp_path / "photos")),
        "photos",
        "test",
        tmp_path / "shards",
        ShardConfig(workers=1, check="none"),
        progress=False,
    )
    proc = run_cli(
        "extract",
        "--random-init",
        "--arch",
        "swin_pico",
        "--shards",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "f.pt"),
        "--image-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
    )
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1 and "does not decode" in err[0] and "in shard " in err[0], (
        proc.stderr[-2000:]
    )


def test_the_workflow_dry_run_rejects_what_the_cli_rejects(tmp_path):
    """`snakemake -n` used to accept a warm-up longer than training (the run then died on an AssertionError)."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO, env_with_python

    cfg = {
        "datasets": {"digits": {"source": "digits"}},
        "runs": {
            "r": {
                "config": str(REPO / "configs/pretrain/demo.yaml"),
                "dataset": "digits",
                "overrides": ["optim.warmup_epochs=400"],
            }
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "c.yaml"),
            "-n",
            "--cores",
            "1",
        ],
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "runs.r: " in proc.stderr + proc.stdout
    epochs = yaml.safe_load((REPO / "configs/pretrain/demo.yaml").read_text())["optim"]["epochs"]
    assert f"optim.warmup_epochs 400 is longer than optim.epochs {epochs}" in proc.stderr + proc.stdout, proc.stderr[
        -2000:
    ]


def test_resume_allows_another_batch_split_of_the_same_total_and_refuses_other_shards(digits_shards, tmp_path):
    """optim.total_batch_size: the per-process batch differs with the job's shape, and the resume allows it; the
    shards may move but not change (same size, other data: refused)."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from esvit.train.config import load_train_config, training_differences
    from tests.conftest import TINY

    on8 = load_train_config("configs/paper/swin_tiny_w7.yaml", ["optim.batch_size_per_device=64"])
    on16 = load_train_config("configs/paper/swin_tiny_w7.yaml", ["optim.batch_size_per_device=32"])
    from esvit.config import to_dict

    assert training_differences(to_dict(on8), on16) == []
    run = tmp_path / "run"
    base = ["pretrain", "--out", str(run), "--no-progress", *TINY, "data.num_workers=0", "run.checkpoint_every_steps=1"]
    assert run_cli(*base, "--shards", str(digits_shards), "run.max_steps=1").returncode == 0
    other = tmp_path / "other"  # the same number of samples, other images (the test split, repeated)
    write_shards(get_source("digits"), "digits", "test", other, ShardConfig(workers=1), progress=False)
    proc = run_cli(*base, "--shards", str(other))
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(err) == 1 and "the run was trained on other shards (digits/train" in err[0], (
        proc.stderr[-1500:]
    )


def test_killed_process_leaves_no_manifest_and_rerun_completes(tmp_path):
    """SIGKILL the real CLI mid-run; the folder must not look complete; a rerun finishes and verifies."""
    require_fashion_mnist()
    out = tmp_path / "fm"
    cmd = [
        sys.executable,
        "-m",
        "esvit",
        "shard",
        "--dataset",
        "fashion_mnist",
        "--split",
        "train",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "1",
        f"data_dir={tmp_path / 'data'}",
        "shard.max_samples=3000",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env_with_python(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".work").glob("chunk-*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list((out / ".work").glob("chunk-*.json"))) >= 2, "the run never got going"
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    done = run_cli(*cmd[3:], check=True)
    assert "60000 images" in done.stdout
    assert verify_shards(out) == []
