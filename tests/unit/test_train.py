"""Training core: schedules, optimizer details, teacher updates, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from esvit.checkpoint_file import CheckpointError, load_checkpoint, save_checkpoint
from esvit.config import ConfigError
from esvit.data.transforms import MultiCropAugmentation
from esvit.train.config import load_train_config, per_device_batch
from esvit.train.loop import Trainer, TrainingError, build_models, clip_gradients, param_groups, train
from esvit.train.schedules import cosine_schedule
from tests.conftest import TINY, tiny_cfg

# ------------------------------------------------------------------------------------------------ schedules


def test_cosine_schedule_at_first_warmup_end_and_last_steps():
    base, final, epochs, ipe, warm = 1e-3, 1e-6, 10, 7, 2
    s = cosine_schedule(base, final, epochs, ipe, warm)
    assert len(s) == 70
    assert s[0] == 0.0
    assert s[warm * ipe - 1] == pytest.approx(base)  # warm-up ends at the base value
    assert s[warm * ipe] == pytest.approx(base)  # cosine starts at the base value
    n = (epochs - warm) * ipe
    assert s[-1] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * (n - 1) / n)))
    wd = cosine_schedule(0.04, 0.4, epochs, ipe)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4 - 0.18 * (1 + math.cos(math.pi * 69 / 70)))
    m = cosine_schedule(0.996, 1.0, epochs, ipe)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) >= 0) and m[-1] < 1.0


def test_trainer_scales_lr_by_batch_over_256(digits_shards):
    cfg = tiny_cfg(digits_shards)
    tr = Trainer(cfg, digits_shards, iters_per_epoch=6)
    assert tr.lr[5] == pytest.approx(0.002 * 8 / 256)  # end of the 1-epoch warm-up


@pytest.mark.parametrize("world,per_device", [(1, 512), (8, 64), (16, 32), (64, 8)])
def test_the_paper_total_batch_gives_the_per_process_batch_on_any_world_size(world, per_device):
    optim = load_train_config("configs/paper/swin_base_w14.yaml").optim
    assert per_device_batch(optim, world) == per_device
    assert per_device_batch(load_train_config(None).optim, world) == 32  # no total: the per-device batch as given


def test_a_world_size_that_cannot_reach_the_total_batch_is_refused():
    with pytest.raises(ConfigError, match="total_batch_size 512 cannot be split over 12 processes.*1, 2, 4, 8, 16"):
        per_device_batch(load_train_config("configs/paper/swin_tiny_w7.yaml").optim, 12)


def test_a_run_with_a_total_batch_trains_at_that_batch_and_its_lr(digits_shards, tmp_path, caplog):
    cfg = tiny_cfg(digits_shards, "optim.total_batch_size=16", "run.max_steps=2", "data.num_workers=0")
    with caplog.at_level("INFO", logger="esvit"):
        train(cfg, tmp_path / "run", show_progress=False)
    saved = load_checkpoint(tmp_path / "run" / "final.pth")
    assert saved["config"]["optim"]["batch_size_per_device"] == 16 and saved["iters_per_epoch"] == 48 // 16
    assert "batch 16 = 16 per process x 1 processes; peak lr 0.000125 (optim.lr 0.002 x 16 / 256)" in caplog.text


def test_keep_epochs_keeps_a_continual_start_whatever_keep_every_epochs_says(digits_shards, tmp_path):
    cfg = tiny_cfg(digits_shards, "run.keep_every_epochs=0", "run.keep_epochs=[1]", "data.num_workers=0")
    train(cfg, tmp_path / "run", show_progress=False)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint0*.pth")) == ["checkpoint0001.pth"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint0001.pth")["epoch"] == 1


# ------------------------------------------------------------------------------------------------ optimizer


def test_param_groups_decay_weights_only():
    student, _ = build_models(load_train_config(None, TINY))
    decay, no_decay = param_groups(student)
    names = {id(p): n for n, p in student.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 or names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert any("relative_position_bias_table" in names[id(p)] for p in decay["params"])  # 2-D: decayed


def test_clip_gradients_is_per_parameter_like_the_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * torch.rand(()) * 10
    expected = []
    for p in model.parameters():  # the reference's loop
        g = p.grad.clone()
        norm = g.norm(2)
        coef = 3.0 / (norm + 1e-6)
        expected.append(g * coef if coef < 1 else g)
    clip_gradients(model, 3.0)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
    assert all(p.grad.norm() <= 3.0 + 1e-5 for p in model.parameters())


def crops_batch(cfg, n=8, seed=0):
    torch.manual_seed(seed)
    aug = MultiCropAugmentation(
        cfg.crops.global_size,
        cfg.crops.global_scale,
        cfg.crops.local_number,
        cfg.crops.local_size,
        cfg.crops.local_scale,
    )
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]
    per_image = [aug(im) for im in imgs]
    return [torch.stack([c[i] for c in per_image]) for i in range(len(per_image[0]))]


def test_step_no_gradient_reaches_teacher_and_teacher_is_the_ema(digits_shards):
    cfg = tiny_cfg(digits_shards)
    tr = Trainer(cfg, digits_shards, iters_per_epoch=6)
    tr.epoch = 1  # past freeze_last_layer
    old_teacher = [p.detach().clone() for p in tr.teacher.parameters()]
    m = float(tr.momentum[0])
    tr.step(crops_batch(cfg))
    for p in tr.teacher.parameters():
        assert p.grad is None and not p.requires_grad
    for old, t, s in zip(old_teacher, tr.teacher.parameters(), tr.student.parameters()):
        torch.testing.assert_close(t, m * old + (1 - m) * s.detach(), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(o, t) for o, t in zip(old_teacher, tr.teacher.parameters()))


def test_steps_with_chunked_heads_train_as_the_logits_path_does(digits_shards):
    """Three steps with the last layers applied inside the loss in chunks of 5 rows against three with whole
    logits: the same losses, student, teacher and centres up to float rounding."""
    same = "model.drop_path_rate=0"  # the two trainers draw from one global RNG: no random depth
    cfg_a = tiny_cfg(digits_shards, same, "run.chunked_heads=true", "run.head_chunk_rows=5")
    cfg_b = tiny_cfg(digits_shards, same, "run.chunked_heads=false")
    a, b = Trainer(cfg_a, digits_shards, iters_per_epoch=6), Trainer(cfg_b, digits_shards, iters_per_epoch=6)
    assert a.student.chunked_heads and not b.student.chunked_heads
    a.epoch = b.epoch = 1  # past freeze_last_layer: the last layers' gradients count
    for _ in range(3):
        crops = crops_batch(cfg_a)
        sa, sb = a.step(crops), b.step(crops)
        assert sa.loss == pytest.approx(sb.loss, rel=1e-5) and sa.region == pytest.approx(sb.region, rel=1e-5)
    for (name, pa), pb in zip(a.student.named_parameters(), b.student.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
    for pa, pb in zip(a.teacher.parameters(), b.teacher.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.loss.center, b.loss.center, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.loss.center_grid, b.loss.center_grid, rtol=1e-4, atol=1e-5)
    assert sa.teacher_entropy == pytest.approx(sb.teacher_entropy, rel=1e-4)  # the collapse diagnostic too
    assert 0 < sa.teacher_entropy < math.log(256)


def test_last_layer_is_frozen_in_epoch_zero(digits_shards):
    cfg = tiny_cfg(digits_shards)
    tr = Trainer(cfg, digits_shards, iters_per_epoch=6)
    tr.global_step = 3  # lr > 0 (step 0 of the warm-up has lr 0), still epoch 0
    before = {n: p.detach().clone() for n, p in tr.student.named_parameters()}
    tr.step(crops_batch(cfg))
    for n, p in tr.student.named_parameters():
        if "last_layer" in n:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(tr.student.head.mlp[0].weight, before["head.mlp.0.weight"])


def test_multicrop_shapes_and_order():
    from PIL import Image

    aug = MultiCropAugmentation(64, (0.4, 1), local_number=[3, 2], local_size=[24, 32])
    crops = aug(Image.new("RGB", (80, 70), (120, 30, 200)))
    assert [c.shape[-1] for c in crops] == [64, 64, 32, 32, 24, 24, 24]
    assert all(c.shape[0] == 3 for c in crops)


# ---------------------------------------------------------------------------------------------- checkpoints


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"student": _Boom()}, f)
    with pytest.raises(CheckpointError, match="safely"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    torch.save({"x": _Boom()}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil2.pth")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------------- resume


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(digits_shards, tmp_path, monkeypatch):
    cfg = tiny_cfg(digits_shards, "run.checkpoint_every_steps=2")
    from esvit.losses import esvit_loss

    real = esvit_loss.EsViTLoss.forward
    calls = {"n": 0}

    def poisoned(self, student, teacher, epoch):
        calls["n"] += 1
        parts = real(self, student, teacher, epoch)
        if calls["n"] == 4:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(esvit_loss.EsViTLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at epoch 0, step 3.*last good checkpoint"):
        train(cfg, tmp_path / "run", show_progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth")["global_step"] == 2


@pytest.mark.parametrize("crop", [0, -1])  # a global crop (teacher and student), a local crop (student only)
def test_a_nan_pixel_in_any_crop_stops_the_step(digits_shards, crop):
    cfg = tiny_cfg(digits_shards)
    tr = Trainer(cfg, digits_shards, iters_per_epoch=6)
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(2, 3, 32, 32, generator=gen) for _ in range(2)] + [
        torch.randn(2, 3, 16, 16, generator=gen) for _ in range(2)
    ]
    crops[crop][1, 0, 5, 5] = float("nan")
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    with pytest.raises(TrainingError, match="loss is nan at epoch 0, step 0"):
        tr.step(crops)
    assert all(torch.equal(v, before[k]) for k, v in tr.student.state_dict().items())  # no update applied


def test_pretrain_cli_writes_the_run_folder_and_names_bad_input(digits_shards, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli(
        "pretrain",
        "--shards",
        str(digits_shards),
        "--out",
        str(out),
        "--no-progress",
        *TINY,
        "run.max_steps=3",
        "run.tensorboard=true",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("final.pth", "done.json", "checkpoint.pth", "config.yaml", "log.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard scalars"
    assert load_checkpoint(out / "final.pth")["global_step"] == 3
    bad = run_cli("pretrain", "--shards", str(tmp_path / "nope"), "--out", str(out), *TINY)
    assert bad.returncode == 1 and "manifest.json" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("pretrain", "--out", str(out), "model.arch=swin_tiny_w8")
    assert bad.returncode == 2 and "Did you mean 'swin_tiny_w7'" in bad.stderr


# docs/algorithm.md §2 and the paper's Table 4 (backbone, millions)
PAPER_PARAMS_M = {
    "swin_tiny": 28,
    "swin_small": 49,
    "swin_base": 87,
    "vil_tiny": 28,
    "cvt_tiny": 29,
    "pvt_tiny": 24,
    "resnet50": 24,
    "deit_small": 21,
}


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[2] / "configs/paper").glob("*.yaml"))
)
def test_paper_presets_load_with_the_papers_settings(preset):
    from esvit.models import Backbone
    from tests.conftest import REPO

    cfg = load_train_config(REPO / "configs/paper" / f"{preset}.yaml")
    assert cfg.optim.epochs == 300 and cfg.optim.lr == 5e-4 and cfg.model.out_dim == 65536
    assert cfg.crops.local_number == [8] and cfg.crops.local_size == [96] and cfg.crops.global_scale == [0.4, 1.0]
    assert cfg.loss.teacher_temp == 0.07 and cfg.loss.warmup_teacher_temp_epochs == 30 and not cfg.model.norm_last_layer
    assert cfg.loss.region_loss_weight == (0.0 if preset.endswith("_view") else 0.5)
    assert cfg.optim.total_batch_size == (1024 if preset.startswith("table4_") else 512)  # Table 4: batch 1024
    family = "_".join(cfg.model.arch.split("_")[:2])
    n = sum(p.numel() for p in Backbone(cfg.model.arch).parameters()) / 1e6
    assert abs(n - PAPER_PARAMS_M[family]) < 1.0, (cfg.model.arch, n)


@pytest.mark.parametrize(
    "slurm_cpus,configured,workers", [(None, None, 2), ("10", None, 9), ("1", None, 1), ("10", 3, 3), ("10", 0, 0)]
)
def test_loader_workers_follow_the_allocation_unless_set(monkeypatch, slurm_cpus, configured, workers):
    from esvit.train.config import loader_workers

    if slurm_cpus is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm_cpus)
    data = load_train_config(None, [] if configured is None else [f"data.num_workers={configured}"]).data
    assert loader_workers(data) == workers


def test_deterministic_kernels_are_switched_on_and_change_nothing_on_the_cpu(digits_shards, tmp_path):
    """run.deterministic turns on PyTorch's deterministic algorithms and the cuBLAS workspace setting; on the
    CPU (deterministic already) the run's weights are bit-identical to a default run."""
    try:
        a = tiny_cfg(digits_shards, "run.max_steps=3", "data.num_workers=0")
        train(a, tmp_path / "a", show_progress=False)
        assert not torch.are_deterministic_algorithms_enabled()
        b = tiny_cfg(digits_shards, "run.max_steps=3", "data.num_workers=0", "run.deterministic=true")
        train(b, tmp_path / "b", show_progress=False)
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
    wa, wb = load_checkpoint(tmp_path / "a" / "final.pth"), load_checkpoint(tmp_path / "b" / "final.pth")
    assert all(torch.equal(v, wb["student"][k]) for k, v in wa["student"].items())


def test_a_collapsing_run_is_flagged_in_its_log_as_it_happens(digits_shards, tmp_path):
    """A real collapse: a teacher temperature of 20 leaves the teacher's outputs uniform, so from the second
    epoch on every log record flags it (teacher entropy near log K) and the run's stderr warns; a healthy run
    with the same settings otherwise is not flagged."""
    from tests.conftest import run_cli

    hot = ["loss.teacher_temp=20", "loss.warmup_teacher_temp=20"]
    for name, extra in (("collapsed", hot), ("healthy", [])):
        out = tmp_path / name
        proc = run_cli("pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        later = [r for r in records if r["epoch"] >= 1]
        assert later and all(r["log_k"] == pytest.approx(math.log(256), abs=1e-4) for r in records)
        if name == "collapsed":
            assert all("near log K" in r["collapse"] for r in later), later
            assert all(r["teacher_entropy"] > 0.95 * math.log(256) for r in later)
            assert "collapse suspected" in proc.stderr
        else:
            assert not any(r["collapse"] for r in records) and "collapse suspected" not in proc.stderr
            assert all(r["teacher_entropy"] < 0.95 * math.log(256) for r in later)


@pytest.mark.parametrize(
    "record,expected",
    [
        ({"epoch": 0, "teacher_entropy": 5.5, "loss": 5.5}, None),  # the first epoch is never flagged
        ({"epoch": 1, "teacher_entropy": 5.4, "loss": 5.0}, "uniform"),
        ({"epoch": 1, "teacher_entropy": 0.01, "loss": 3.0}, "one prototype"),
        ({"epoch": 2, "teacher_entropy": 2.0, "loss": 5.5}, "nothing learnt"),
        ({"epoch": 1, "teacher_entropy": 2.0, "loss": 5.5}, None),  # the loss only from the third epoch
        ({"epoch": 4, "teacher_entropy": 2.0, "loss": 6.4}, None),  # above log K is not "near"
        ({"epoch": 3, "teacher_entropy": 2.0, "loss": 3.0}, None),
    ],
)
def test_collapse_signals(record, expected):
    from esvit.train.loop import collapse_signal

    got = collapse_signal(record, math.log(256))
    assert (got is None) if expected is None else (expected in got)
