"""Whole training runs: bitwise resume, continual mode, a Fashion-MNIST run, two-process DDP (torchrun).

Each runs real training (seconds to a minute on two cores); the fast checks of the training step are in
tests/unit/test_train.py.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from esvit.checkpoint_file import load_checkpoint
from esvit.train.config import load_train_config
from esvit.train.loop import Trainer, train
from tests.conftest import tiny_cfg


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
    logged = [json.loads(line)["step"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # no duplicated log records after the resume


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
    log = [json.loads(line) for line in (tmp_path / "cont" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] > 6 and log[-1]["step"] == 12 and log[-1]["loss_region"] is not None


@pytest.mark.slow
def test_short_cpu_run_on_fashion_mnist_shards_lowers_the_loss(tmp_path):
    """60 steps of the real pipeline (shards -> multi-crop -> EsViT loss) on real images: the loss goes down."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source
    from tests.conftest import FASHION_ROOT, require_fashion_mnist

    require_fashion_mnist()
    shards = tmp_path / "fm"
    src = get_source("fashion_mnist", str(FASHION_ROOT), cache_dir=str(tmp_path / "raw"))
    write_shards(src, "fashion_mnist", "test", shards, ShardConfig(max_samples=2500, workers=2), progress=False)
    cfg = load_train_config(
        "configs/pretrain/demo.yaml",
        [
            f"data.shards={shards}",
            "run.max_steps=60",
            "run.log_every_steps=5",
            "run.tensorboard=false",
            "model.arch=swin_pico",
            "model.out_dim=1024",
            "model.hidden_dim=256",
            "optim.batch_size_per_device=32",
            "optim.warmup_epochs=0",
            "optim.lr=0.002",
            "crops.local_number=[2]",
        ],
    )
    train(cfg, tmp_path / "run", show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, f"loss did not go down: {losses}"


@pytest.mark.slow
def test_two_process_ddp_run_with_env_rendezvous(digits_shards, tmp_path):
    """torchrun (env:// rendezvous, gloo on CPU): 2 ranks split the epoch and finish together."""
    from tests.conftest import torchrun_pretrain

    out = tmp_path / "ddp"
    proc = torchrun_pretrain(digits_shards, out, "data.num_workers=0", "run.threads=1", "optim.epochs=1")
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
    from tests.conftest import POISON_RANK_1, REPO, env_with_python, torchrun_pretrain

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_RANK_1)
    env = env_with_python()
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), env.get("PYTHONPATH", "")])
    out = tmp_path / "ddp"
    overrides = ("data.num_workers=0", "run.threads=1", "run.checkpoint_every_steps=1", "run.dist_timeout_min=5")
    proc = torchrun_pretrain(digits_shards, out, *overrides, env=env, timeout=240)  # < the 5-min timeout
    assert proc.returncode != 0
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("esvit: error: loss is nan")]
    # (torchrun ends the other worker once one has failed, so one or both of the identical lines get printed)
    assert said and all("on rank 1 of 2 at epoch 0, step 2;" in ln for ln in said), proc.stderr[-3000:]
    assert "Timeout" not in proc.stderr and "timed out" not in proc.stderr
    assert load_checkpoint(out / "checkpoint.pth")["global_step"] == 2 and not (out / "final.pth").exists()
