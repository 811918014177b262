"""GPU-path logic checked on the CPU: device choice, what the rules pass, RNG state per process, no CUDA
reseeding from the data pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from esvit.device import DeviceError, resolve_device
from tests.conftest import run_cli


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_takes_the_gpu_when_one_is_visible_and_the_cpu_otherwise(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        resolve_device("cuda")


@pytest.mark.parametrize("local_rank,visible,index", [(3, 8, 3), (3, 1, 0), (5, 2, 1)])
def test_each_process_takes_local_rank_modulo_the_visible_gpus(monkeypatch, local_rank, visible, index):
    """Sites that bind one GPU per task show each process a single cuda:0; others show the node's GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert resolve_device("auto") == torch.device("cuda", index)
    from esvit.train.config import load_train_config
    from esvit.train.loop import _device

    assert _device(load_train_config(None, ["run.device=cuda"])) == torch.device("cuda", index)


def test_evaluation_commands_say_which_device_ran_and_refuse_a_missing_gpu(tmp_path, digits_shards):
    proc = run_cli(
        "extract",
        "--random-init",
        "--arch",
        "swin_pico",
        "--shards",
        str(digits_shards),
        "--out",
        str(tmp_path / "f.pt"),
        "--image-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 0 and "extract: device cpu (" in proc.stdout, proc.stderr
    for cmd, extra in (("probe", []), ("linear", ["--epochs", "1", "--no-progress"])):
        out = tmp_path / f"{cmd}.json"
        proc = run_cli(
            cmd,
            "--train",
            str(tmp_path / "f.pt"),
            "--test",
            str(tmp_path / "f.pt"),
            "--out",
            str(out),
            "--run",
            "r",
            "--dataset",
            "d",
            *extra,
        )
        assert proc.returncode == 0, proc.stderr[-1500:]
        assert json.loads(out.read_text())["device"] == "cpu" and "device cpu (" in proc.stdout
    if not torch.cuda.is_available():
        proc = run_cli(
            "extract",
            "--random-init",
            "--arch",
            "swin_pico",
            "--shards",
            str(digits_shards),
            "--out",
            str(tmp_path / "g.pt"),
            "--device",
            "cuda",
        )
        assert (
            proc.returncode == 2 and "--device: device 'cuda' asked for, but no CUDA device is visible" in proc.stderr
        )
        assert "Traceback" not in proc.stderr and not (tmp_path / "g.pt").exists()


def test_linear_fast_trains_on_the_device_it_is_given(monkeypatch):
    """The fast linear protocol used to ignore the device: its head and features now go where asked."""
    from esvit.eval import linear

    seen = []
    real = linear._train

    def spy(make_epoch, head, *a, **k):
        seen.append(next(head.parameters()).device)
        x, _ = next(make_epoch(0))
        seen.append(x.device)
        return real(make_epoch, head, *a, **k)

    monkeypatch.setattr(linear, "_train", spy)
    x, y = torch.randn(40, 8), torch.arange(40) % 4
    res = linear.linear_fast(x, y, x, y, epochs=1, device="cpu", show_progress=False)
    assert seen == [torch.device("cpu")] * 2 and res.epochs == 1
    with pytest.raises(RuntimeError, match="meta tensors"):  # a device it cannot read back from is really used
        linear.linear_fast(x, y, x, y, epochs=1, device=torch.device("meta"), show_progress=False)


def test_the_data_pipeline_never_reseeds_the_gpus(digits_shards, monkeypatch):
    """With data.num_workers=0 the augmentation runs in the training process: seeding it per sample must touch
    the CPU generator only (torch.manual_seed would reseed every GPU's generator each sample)."""
    from esvit.data.pipeline import make_loader, open_shards, train_pipeline
    from esvit.data.transforms import MultiCropAugmentation

    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    aug = MultiCropAugmentation(32, [0.4, 1.0], [2], [16], [0.05, 0.4])
    batches = iter(make_loader(train_pipeline(open_shards(digits_shards), aug, 4), 0, 2))
    next(batches)
    assert calls == []


def test_checkpoints_hold_this_processs_gpu_rng_state_only(monkeypatch):
    """A resume on another node shape (another GPU count) restores it; every visible GPU's state did not."""
    from esvit.train import state

    own = torch.arange(8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: own if device == 1 else pytest.fail("wrong GPU"))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    saved = state.rng_state()
    assert torch.equal(saved["cuda"], own)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    state.set_rng_state(saved)
    state.set_rng_state({**saved, "cuda": [torch.zeros(8, dtype=torch.uint8), own]})  # an older checkpoint
    assert [(torch.equal(s, own), d) for s, d in restored] == [(True, 1), (True, 1)]
