"""Training core: schedules, optimizer details, teacher updates, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from esvit.data.transforms import MultiCropAugmentation
from esvit.config import ConfigError
from esvit.train.config import load_train_config, per_device_batch
from esvit.train.loop import Trainer, TrainingError, build_models, clip_gradients, param_groups, train
from esvit.train.schedules import cosine_schedule
from esvit.checkpoint_file import CheckpointError, load_checkpoint, save_checkpoint

TINY = [
    "model.arch=swin_pico", "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32",
    "model.drop_path_rate=0.1", "crops.global_size=32", "crops.local_size=[16]", "crops.local_number=[2]",
    "optim.batch_size_per_device=8", "optim.epochs=2", "optim.warmup_epochs=1", "optim.lr=0.002",
    "data.samples_per_epoch=48", "data.num_workers=2", "data.shuffle_buffer=64", "run.threads=2",
    "run.tensorboard=false", "run.log_every_steps=2", "loss.warmup_teacher_temp_epochs=1",
]  # fmt: skip


def tiny_cfg(shards, *extra):
    return load_train_config(None, [*TINY, f"data.shards={shards}", *extra])


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
    aug = MultiCropAugmentation(cfg.crops.global_size, cfg.crops.global_scale, cfg.crops.local_number,
                                cfg.crops.local_size, cfg.crops.local_scale)  # fmt: skip
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
    for step in range(3):
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


def _weights(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoint.pth")
    return ckpt


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [4, 6])  # mid-epoch (with workers) and exactly at the epoch boundary
def test_interrupted_and_resumed_run_is_bitwise_identical(digits_shards, tmp_path, stop_at):
    cfg = tiny_cfg(digits_shards)
    full = tmp_path / "full"
    train(cfg, full, show_progress=False)
    part = tmp_path / "part"
    steps = iter(range(1, 100))
    train(cfg, part, should_stop=lambda: next(steps) >= stop_at, show_progress=False)
    assert not (part / "final.pth").exists()
    assert load_checkpoint(part / "checkpoint.pth")["global_step"] == stop_at
    train(cfg, part, show_progress=False)  # resumes
    a, b = _weights(full), _weights(part)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("student", "teacher", "loss"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    for name, tensor in a["optimizer"]["state"].items():
        assert all(torch.equal(tensor[k], b["optimizer"]["state"][name][k]) for k in tensor)
    logged = [json.loads(l)["step"] for l in (part / "log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # no duplicated log records after the resume


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


@pytest.mark.slow
def test_continual_mode_starts_region_training_from_a_view_only_checkpoint(digits_shards, tmp_path):
    view = tiny_cfg(digits_shards, "loss.region_loss_weight=0", "run.max_steps=6")
    train(view, tmp_path / "view", show_progress=False)
    src = load_checkpoint(tmp_path / "view" / "final.pth")
    assert not any(k.startswith("head_dense") for k in src["student"])
    cfg = tiny_cfg(digits_shards, f"run.continual_from={tmp_path / 'view' / 'final.pth'}")
    tr = Trainer(cfg, tmp_path / "cont", iters_per_epoch=6)
    tr.load_continual(tmp_path / "view" / "final.pth")
    for k, v in src["teacher"].items():
        assert torch.equal(tr.teacher.state_dict()[k], v), k
    for k, v in tr.student.head_dense.state_dict().items():
        assert torch.equal(tr.teacher.head_dense.state_dict()[k], v)
    assert torch.count_nonzero(tr.loss.center_grid) == 0 and torch.equal(tr.loss.center, src["loss"]["center"])
    assert tr.global_step == 6 and tr.epoch == 1
    train(cfg, tmp_path / "cont", show_progress=False)
    log = [json.loads(l) for l in (tmp_path / "cont" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] > 6 and log[-1]["step"] == 12 and log[-1]["loss_region"] is not None


@pytest.mark.slow
def test_short_cpu_run_on_fashion_mnist_shards_lowers_the_loss(tmp_path):
    """60 steps of the real pipeline (shards -> multi-crop -> EsViT loss) on real images: the loss goes down."""
    from esvit.data.shards import ShardSettings, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import FASHION_ROOT, require_fashion_mnist

    require_fashion_mnist()
    shards = tmp_path / "fm"
    src = get_source("fashion_mnist", str(FASHION_ROOT), cache_dir=str(tmp_path / "raw"))
    write_shards(src, "fashion_mnist", "test", shards, ShardSettings(max_samples=2500, workers=2), progress=False)
    cfg = load_train_config("configs/pretrain/demo.yaml", [
        f"data.shards={shards}", "run.max_steps=60", "run.log_every_steps=5", "run.tensorboard=false",
        "model.arch=swin_pico", "model.out_dim=1024", "model.hidden_dim=256", "optim.batch_size_per_device=32",
        "optim.warmup_epochs=0", "optim.lr=0.002", "crops.local_number=[2]",
    ])  # fmt: skip
    train(cfg, tmp_path / "run", show_progress=False)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, f"loss did not go down: {losses}"


def test_pretrain_cli_writes_the_run_folder_and_names_bad_input(digits_shards, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli("pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY,
                   "run.max_steps=3", "run.tensorboard=true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("final.pth", "done.json", "checkpoint.pth", "config.yaml", "log.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard scalars"
    assert load_checkpoint(out / "final.pth")["global_step"] == 3
    bad = run_cli("pretrain", "--shards", str(tmp_path / "nope"), "--out", str(out), *TINY)
    assert bad.returncode == 1 and "manifest.json" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("pretrain", "--out", str(out), "model.arch=swin_tiny_w8")
    assert bad.returncode == 2 and "Did you mean 'swin_tiny_w7'" in bad.stderr


PAPER_PARAMS_M = {"swin_tiny": 28, "swin_small": 49, "swin_base": 87}  # docs/algorithm.md §2 (backbone, millions)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[2] / "configs/paper").glob("*.yaml")))
def test_paper_presets_load_with_the_papers_settings(preset):
    from tests.conftest import REPO
    from esvit.models import Backbone

    cfg = load_train_config(REPO / "configs/paper" / f"{preset}.yaml")
    assert cfg.optim.epochs == 300 and cfg.optim.lr == 5e-4 and cfg.model.out_dim == 65536
    assert cfg.crops.local_number == [8] and cfg.crops.local_size == [96] and cfg.crops.global_scale == [0.4, 1.0]
    assert cfg.loss.teacher_temp == 0.07 and cfg.loss.warmup_teacher_temp_epochs == 30 and not cfg.model.norm_last_layer
    assert cfg.loss.region_loss_weight == (0.0 if preset.endswith("_view") else 0.5)
    family = "_".join(cfg.model.arch.split("_")[:2])
    n = sum(p.numel() for p in Backbone(cfg.model.arch).parameters()) / 1e6
    assert abs(n - PAPER_PARAMS_M[family]) < 1.0, (cfg.model.arch, n)


@pytest.mark.slow
def test_two_process_ddp_run_with_env_rendezvous(digits_shards, tmp_path):
    """torchrun (env:// rendezvous, gloo on CPU): 2 ranks split the epoch and finish together."""
    import subprocess
    import sys

    from tests.conftest import REPO, env_with_python

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "esvit",
           "pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY,
           "data.num_workers=0", "run.threads=1", "optim.epochs=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env_with_python(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "final.pth")
    assert ckpt["iters_per_epoch"] == 48 // (8 * 2) and ckpt["global_step"] == 3
    # both ranks end with bit-identical student and teacher (the teacher too: it is never broadcast)
    ranks = json.loads((out / "done.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["fingerprint"] == ranks[1]["fingerprint"]




@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_together_naming_it(digits_shards, tmp_path):
    """One rank's non-finite loss used to stop that rank alone, before the backward pass, while the others waited
    in DDP's gradient all-reduce until the collective timeout. Now the ranks agree after the backward pass: all
    stop at the same step with the same message naming the rank; the last good checkpoint is kept."""
    import subprocess
    import sys

    from tests.conftest import POISON_RANK_1, REPO, env_with_python

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_RANK_1)
    env = env_with_python()
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), env.get("PYTHONPATH", "")])
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "esvit",
           "pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY,
           "data.num_workers=0", "run.threads=1", "run.checkpoint_every_steps=1", "run.dist_timeout_min=5"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)  # < the 5-min timeout
    assert proc.returncode != 0
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("esvit: error: loss is nan")]
    # (torchrun ends the other worker once one has failed, so one or both of the identical lines get printed)
    assert said and all("on rank 1 of 2 at epoch 0, step 2;" in ln for ln in said), proc.stderr[-3000:]
    assert "Timeout" not in proc.stderr and "timed out" not in proc.stderr
    assert load_checkpoint(out / "checkpoint.pth")["global_step"] == 2 and not (out / "final.pth").exists()


@pytest.mark.parametrize("slurm_cpus,configured,workers", [(None, None, 2), ("10", None, 9), ("1", None, 1), ("10", 3, 3), ("10", 0, 0)])
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


@pytest.mark.parametrize("record,expected", [
    ({"epoch": 0, "teacher_entropy": 5.5, "loss": 5.5}, None),  # the first epoch is never flagged
    ({"epoch": 1, "teacher_entropy": 5.4, "loss": 5.0}, "uniform"),
    ({"epoch": 1, "teacher_entropy": 0.01, "loss": 3.0}, "one prototype"),
    ({"epoch": 2, "teacher_entropy": 2.0, "loss": 5.5}, "nothing learnt"),
    ({"epoch": 1, "teacher_entropy": 2.0, "loss": 5.5}, None),  # the loss only from the third epoch
    ({"epoch": 4, "teacher_entropy": 2.0, "loss": 6.4}, None),  # above log K is not "near"
    ({"epoch": 3, "teacher_entropy": 2.0, "loss": 3.0}, None),
])  # fmt: skip
def test_collapse_signals(record, expected):
    from esvit.train.loop import collapse_signal

    got = collapse_signal(record, math.log(256))
    assert (got is None) if expected is None else (expected in got)
