"""Official EsViT checkpoints import; exported backbones load into timm strictly and compute the same."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from esvit.models import Backbone
from esvit.models.checkpoint import export_backbone, import_official
from esvit.train.state import CheckpointError, load_checkpoint
from tests.conftest import run_cli


def official_layout(backbone: Backbone) -> dict:
    """A checkpoint laid out as microsoft/esvit writes it (reference §2.1): PatchMerging at the end of each
    stage, the non-persistent buffers stored, DINO heads beside the backbone, student keys under module."""
    sd = {}
    for k, v in backbone.net.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        sd[k] = v.clone()
    for name, m in backbone.net.named_modules():
        if hasattr(m, "relative_position_index"):
            sd[f"{name}.relative_position_index"] = m.relative_position_index.clone()
    for head in ("head", "head_dense"):
        sd[f"{head}.mlp.0.weight"] = torch.randn(2048, 768)
        sd[f"{head}.last_layer.weight_g"] = torch.ones(65536, 1)
    return {"teacher": sd, "student": {f"module.{k}": v for k, v in sd.items()}, "epoch": 300,
            "dino_loss": {"center": torch.zeros(1, 65536)}}  # fmt: skip


def test_official_swin_checkpoint_imports_and_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    original = Backbone("swin_tiny_w7").eval()
    torch.save(official_layout(original), tmp_path / "official.pth")
    assert any(k.startswith("layers.0.downsample") for k in torch.load(tmp_path / "official.pth", weights_only=True)["teacher"])
    proc = run_cli("import", "--official", str(tmp_path / "official.pth"), "--arch", "swin_tiny_w7", "--out", str(tmp_path / "imp.pth"))
    assert proc.returncode == 0, proc.stderr
    from esvit.eval.features import load_backbone

    imported, meta = load_backbone(tmp_path / "imp.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(imported(x)[0], original(x)[0]) and meta["arch"] == "swin_tiny_w7"
    with pytest.raises(CheckpointError, match="does not fit swin_small_w7"):
        import_official(tmp_path / "official.pth", "swin_small_w7", tmp_path / "bad.pth")


def test_export_loads_into_timm_strictly_and_matches(tmp_path, digits_shards):
    from tests.unit.test_train import TINY

    out = tmp_path / "run"
    proc = run_cli("pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY, "run.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-1500:]
    path, name = export_backbone(out / "final.pth", tmp_path / "backbone.pth")
    assert name == "esvit_swin_pico"
    model = timm.create_model(name, num_classes=0, checkpoint_path=str(path)).eval()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    from esvit.eval.features import load_backbone

    ours, _ = load_backbone(out / "final.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x)[0])
    assert load_checkpoint(out / "final.pth")["teacher"]  # the run's checkpoint is untouched
