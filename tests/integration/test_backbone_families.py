"""Every multi-stage family beyond Swin (ViL, CvT, PvT) trains under the EsViT losses through the unchanged
pipeline: view + region loss on multi-crop batches, bitwise resume, two-process DDP (CvT with its BatchNorm).

Each runs real training on two cores (the 4-wide fixture-shaped variants, 64 / 32 px crops: 2 x 2 and 1 x 1
region tokens), seconds to a minute each.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from esvit.checkpoint_file import load_checkpoint
from esvit.train.loop import train
from tests.conftest import tiny_cfg, torchrun_pretrain

CROPS = ["crops.global_size=64", "crops.local_size=[32]"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vil_test", "cvt_test", "pvt_test"])
def test_trains_with_both_losses_and_resumes_bitwise(digits_shards, tmp_path, arch):
    cfg = tiny_cfg(digits_shards, f"model.arch={arch}", *CROPS)
    full = tmp_path / "full"
    train(cfg, full, show_progress=False)
    part = tmp_path / "part"
    steps = iter(range(1, 100))
    train(cfg, part, should_stop=lambda: next(steps) >= 5, show_progress=False)
    assert load_checkpoint(part / "checkpoint.pth")["global_step"] == 5
    train(cfg, part, show_progress=False)  # resumes mid-epoch
    a, b = load_checkpoint(full / "final.pth"), load_checkpoint(part / "final.pth")
    assert a["global_step"] == b["global_step"] == 12
    for key in ("student", "teacher", "loss"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{arch}: {key}.{name} differs after the resume"
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_view"]) and math.isfinite(r["loss_region"]) for r in log)
    assert log[-1]["loss_region"] > 0  # the region loss is on (region_loss_weight 0.5 by default)
    common = [k for k, t in a["teacher"].items() if k in a["student"] and t.is_floating_point()]
    assert any(not torch.equal(a["teacher"][k], a["student"][k]) for k in common)  # the EMA teacher lags behind


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vil_test", "cvt_test", "pvt_test"])
def test_two_process_ddp_run(digits_shards, tmp_path, arch):
    """torchrun (gloo on CPU): both ranks end with bit-identical weights. ViL draws its training-time neighbour
    chunk per rank; CvT's BatchNorm statistics are per rank on CPU (SyncBatchNorm needs GPUs) and the ranks
    agree on rank 0's at the end; PvT's class token and position embeddings get their gradients averaged."""
    out = tmp_path / "ddp"
    overrides = (f"model.arch={arch}", *CROPS, "data.num_workers=0", "run.threads=1", "optim.epochs=1")
    proc = torchrun_pretrain(digits_shards, out, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    assert done["arch"] == arch and done["world_size"] == 2 and done["global_step"] == 3
    assert done["ranks"][0]["fingerprint"] == done["ranks"][1]["fingerprint"]
