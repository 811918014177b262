"""Parity with the official EsViT code, checked against its real outputs and files (tests/fixtures/official/):

- the official Swin network's features at every crop size, for window 7 and 14, against this project's backbone;
- checkpoints in the exact layout ``main_esvit.py`` saves (``args`` namespace, numpy scalars in the optimizer),
  imported, evaluated, and used as a continual start;
- exported backbones load into ``timm.create_model`` strictly and compute the same.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import pytest
import timm
import torch

from esvit.checkpoint_file import CheckpointError, load_checkpoint
from esvit.models import Backbone
from esvit.models.checkpoint import export_backbone, filter_state_dict, import_official, load_official_checkpoint
from tests.conftest import OFFICIAL_FIXTURES as FIXTURES
from tests.conftest import official_checkpoint as official_file
from tests.conftest import run_cli

SIZES = ["96", "112", "128", "160", "192", "224"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def official_outputs() -> dict:
    return torch.load(FIXTURES / "swin_outputs.pt", weights_only=True)


def normalised(image: torch.Tensor) -> torch.Tensor:
    return (image.float() / 255 - MEAN) / STD


# ------------------------------------------------------------------------ the official network, every crop size


@pytest.mark.parametrize("window", ["w7", "w14"])
@pytest.mark.parametrize("size", SIZES)
def test_swin_matches_the_official_network_at_every_crop_size(official_outputs, window, size):
    """Tokens, pooled view feature and last-4-blocks feature equal the official network's (microsoft/esvit,
    random weights, uint8 images) to float rounding; 96 / 128 / 160 / 192 px need the official pad-then-shift."""
    ref = official_outputs[window]
    net = Backbone(f"swin_test_{window}").eval()
    net.net.load_state_dict(filter_state_dict(ref["state_dict"], net), strict=True)  # the import path
    x = normalised(official_outputs["images"][size])
    with torch.no_grad():
        pooled, tokens = net(x)
        last4 = net.last_blocks(x, 4)
    want = ref["outputs"][size]
    for name, got in (("tokens", tokens), ("pooled", pooled), ("last4", last4)):
        assert got.shape == want[name].shape, name
        diff = (got - want[name]).abs().max().item()
        assert diff <= 1e-5, f"{window} {size}px {name}: max |difference| {diff:.3g} from the official network"


def test_the_registered_timm_model_is_the_official_network(official_outputs):
    """What `esvit export` targets, `timm.create_model("esvit_swin_...", num_classes=0)`, computes the official
    function at a local-crop size too."""
    ref = official_outputs["w7"]
    model = timm.create_model("esvit_swin_test_w7", num_classes=0).eval()
    model.load_state_dict(filter_state_dict(ref["state_dict"], Backbone("swin_test_w7")), strict=True)
    with torch.no_grad():
        got = model.forward_features(normalised(official_outputs["images"]["96"])).flatten(1, 2)
    torch.testing.assert_close(got, ref["outputs"]["96"]["tokens"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("window,size", [("w7", "96"), ("w7", "128"), ("w14", "96"), ("w14", "192")])
def test_timms_shift_then_pad_block_is_not_the_official_network(official_outputs, window, size):
    """The fixture tells the two block orders apart: timm's own Swin (same weights) is off by far more than
    rounding where a shifted block needs padding, so the parity test above can fail."""
    from timm.models.swin_transformer import SwinTransformer

    ref = official_outputs[window]
    m = ref["state_dict"]
    plain = SwinTransformer(
        img_size=224,
        patch_size=4,
        embed_dim=4,
        depths=(2, 2, 2, 2),
        num_heads=(1, 1, 2, 2),
        window_size=int(window[1:]),
        strict_img_size=False,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0,
    ).eval()
    plain.load_state_dict(filter_state_dict(m, Backbone(f"swin_test_{window}")), strict=True)
    with torch.no_grad():
        tokens = plain.forward_features(normalised(official_outputs["images"][size])).flatten(1, 2)
    assert (tokens - ref["outputs"][size]["tokens"]).abs().max().item() > 1e-2


# ------------------------------------------------------------------ official checkpoints as main_esvit.py saves them


def test_official_layout_loads_with_its_args_and_nothing_beyond_the_allow_list(tmp_path):
    path = official_file(tmp_path, "official_layout_swin_vr")
    with pytest.raises(Exception, match="Unsupported global"):  # plain weights_only refuses the namespace / numpy
        torch.load(path, weights_only=True)
    ckpt = load_official_checkpoint(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].arch == "swin_tiny"
    assert set(ckpt) == {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"}
    assert isinstance(ckpt["optimizer"]["param_groups"][0]["lr"], np.floating)


def test_official_checkpoint_imports_and_is_evaluated_by_extract(tmp_path, digits_shards):
    official = official_file(tmp_path, "official_layout_swin_vr")
    out = tmp_path / "imported.pth"
    proc = run_cli("import", "--official", str(official), "--arch", "swin_test_w7", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    imported = load_checkpoint(out)
    assert imported["official_args"]["arch"] == "swin_tiny" and imported["official_epoch"] == 201
    # the teacher's weights under timm's names: PatchMerging of official stage i is timm's stage i + 1
    teacher = load_official_checkpoint(official)["teacher"]
    ours = imported["teacher"]
    assert torch.equal(
        ours["backbone.net.layers.1.downsample.reduction.weight"], teacher["layers.0.downsample.reduction.weight"]
    )
    assert torch.equal(
        ours["backbone.net.layers.3.blocks.1.attn.qkv.weight"], teacher["layers.3.blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(ours["backbone.net.norm.weight"], teacher["norm.weight"])
    proc = run_cli(
        "extract",
        "--checkpoint",
        str(out),
        "--shards",
        str(digits_shards),
        "--out",
        str(tmp_path / "f.pt"),
        "--image-size",
        "96",
        "--workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    feats = torch.load(tmp_path / "f.pt", weights_only=True)
    assert feats["pooled"].shape == (1438, 32) and torch.isfinite(feats["pooled"].float()).all()


def test_the_import_record_names_the_tasks_the_official_run_trained(tmp_path):
    """``final.import.json`` beside an import: V for a view-only run, V+R for --use_dense_prediction True (the
    official run's own arguments), so the report compares a release with the right row of the paper."""
    import json

    for name, tasks in (("official_layout_swin_view", "V"), ("official_layout_swin_vr", "V+R")):
        out = tmp_path / name / "final.pth"
        import_official(official_file(tmp_path, name), "swin_test_w7", out)
        record = json.loads((out.parent / "final.import.json").read_text())
        assert record["tasks"] == tasks and record["format"] == "official", name


def test_a_checkpoint_of_another_window_is_refused_not_resized(tmp_path):
    official = official_file(tmp_path, "official_layout_swin_vr")
    with pytest.raises(CheckpointError, match="relative_position_bias_table has shape .*another window size"):
        import_official(official, "swin_test_w14", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


class _Runs:
    """Pickled by reference: unpickling it would run os.system."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_file_with_code_in_it_is_refused_in_one_line_and_never_run(tmp_path):
    evil = _Runs()
    evil.marker = tmp_path / "ran"
    torch.save({"teacher": {"x": torch.zeros(1)}, "args": evil}, tmp_path / "evil.pth")
    proc = run_cli(
        "import", "--official", str(tmp_path / "evil.pth"), "--arch", "swin_test_w7", "--out", str(tmp_path / "o.pth")
    )
    assert proc.returncode == 1 and "cannot load" in proc.stderr and "posix.system" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not evil.marker.exists() and not (tmp_path / "o.pth").exists()


def test_importing_one_of_this_projects_checkpoints_says_so(tmp_path):
    from esvit.checkpoint_file import save_checkpoint

    save_checkpoint(
        tmp_path / "ours.pth",
        {"teacher": {"backbone.net.x": torch.zeros(1)}, "config": {"model": {"arch": "swin_pico"}}},
    )
    proc = run_cli(
        "import", "--official", str(tmp_path / "ours.pth"), "--arch", "swin_pico", "--out", str(tmp_path / "o.pth")
    )
    assert proc.returncode == 1 and "already one of this project's checkpoints" in proc.stderr, proc.stderr


def _with_official_prefixes(backbone: Backbone, arch: str) -> dict:
    """ResNet-50 / DeiT-S keys as main_esvit.py saves them (read from the official code): ResNet-50 is
    DDP-wrapped in student and teacher alike (SyncBatchNorm), its torchvision keys under
    ``module.backbone.backbone.``; DeiT-S holds its heads itself, the student under DDP's ``module.``, the
    teacher bare. Plus the numpy lrs and the args namespace."""
    heads = {
        "head.mlp.0.weight": torch.zeros(4, backbone.num_features),
        "head_dense.last_layer.weight_g": torch.ones(16, 1),
    }
    if arch == "resnet50":
        net = {f"module.backbone.backbone.{k}": v for k, v in backbone.net.state_dict().items()}
        teacher = {**net, **{f"module.{k}": v for k, v in heads.items()}}
        student = teacher
    else:
        teacher = {**backbone.net.state_dict(), **heads}
        student = {f"module.{k}": v for k, v in teacher.items()}
    args = argparse.Namespace(arch=arch, out_dim=16, use_dense_prediction=True, local_crops_size=(96,), lr=0.0005)
    return {
        "student": student,
        "teacher": teacher,
        "epoch": 300,
        "args": args,
        "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(1e-6), "params": [0]}]},
        "dino_loss": {"center": torch.zeros(1, 16), "center_grid": torch.zeros(1, 16)},
    }


@pytest.mark.parametrize("arch,official_arch", [("resnet50", "resnet50"), ("deit_small", "deit_small")])
def test_resnet_and_deit_official_layouts_import_and_compute_the_same(tmp_path, arch, official_arch):
    torch.manual_seed(0)
    original = Backbone(arch).eval()
    torch.save(_with_official_prefixes(original, official_arch), tmp_path / "official.pth")
    out = import_official(tmp_path / "official.pth", arch, tmp_path / "imp.pth")
    from esvit.eval.features import load_backbone

    imported, meta = load_backbone(out)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(imported(x)[0], original(x)[0]) and meta["arch"] == arch


# ---------------------------------------------------------------------------- continual from an official run


def test_continual_training_starts_from_an_official_view_only_checkpoint(tmp_path):
    from esvit.train.config import load_train_config
    from esvit.train.loop import Trainer

    official = official_file(tmp_path, "official_layout_swin_view")
    src = load_official_checkpoint(official)
    assert not any("head_dense" in k for k in src["teacher"]) and set(src["dino_loss"]) == {"center"}
    cfg = load_train_config(
        None,
        [
            "model.arch=swin_test_w7",
            "model.out_dim=16",
            "model.hidden_dim=32",
            "model.bottleneck_dim=16",
            "optim.epochs=300",
            "optim.batch_size_per_device=2",
            "crops.local_number=[2]",
            "run.threads=2",
            f"run.continual_from={official}",
        ],
    )
    tr = Trainer(cfg, tmp_path / "run", iters_per_epoch=3)
    tr.load_continual(official)
    # the official run's teacher and student, under this project's names; head_dense fresh and shared
    t = tr.teacher.state_dict()
    assert torch.equal(
        t["backbone.net.layers.2.downsample.norm.weight"], src["teacher"]["layers.1.downsample.norm.weight"]
    )
    assert torch.equal(t["head.last_layer.weight_v"], src["teacher"]["head.last_layer.weight_v"])
    assert torch.equal(tr.student.state_dict()["head.mlp.0.weight"], src["student"]["module.head.mlp.0.weight"])
    assert torch.equal(t["head_dense.mlp.0.weight"], tr.student.state_dict()["head_dense.mlp.0.weight"])
    assert torch.equal(tr.loss.center, src["dino_loss"]["center"]) and not tr.loss.center_grid.any()
    assert (tr.epoch, tr.it, tr.global_step) == (201, 0, 201 * 3)  # the official epoch counts epochs completed
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(2, 3, 224, 224, generator=gen) for _ in range(2)] + [
        torch.randn(2, 3, 96, 96, generator=gen) for _ in range(2)
    ]
    stats = tr.step(crops)
    assert np.isfinite(stats.loss) and stats.region is not None and tr.global_step == 604


def test_continual_from_an_official_checkpoint_with_other_head_sizes_names_the_mismatch(tmp_path):
    from esvit.train.config import load_train_config
    from esvit.train.loop import Trainer

    official = official_file(tmp_path, "official_layout_swin_view")
    cfg = load_train_config(
        None, ["model.arch=swin_test_w7", "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16"]
    )
    with pytest.raises(CheckpointError, match="does not fit model swin_test_w7 .*size mismatch.*set model"):
        Trainer(cfg, tmp_path / "run", iters_per_epoch=3).load_continual(official)


# ----------------------------------------------------------------------------------------------------- export


def test_export_loads_into_timm_strictly_and_matches(tmp_path, digits_shards):
    from tests.conftest import TINY

    out = tmp_path / "run"
    proc = run_cli(
        "pretrain", "--shards", str(digits_shards), "--out", str(out), "--no-progress", *TINY, "run.max_steps=2"
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    path, name = export_backbone(out / "final.pth", tmp_path / "backbone.pth")
    assert name == "esvit_swin_pico"
    model = timm.create_model(name, num_classes=0, checkpoint_path=str(path)).eval()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    from esvit.eval.features import load_backbone

    ours, _ = load_backbone(out / "final.pth")
    for size in (64, 24):  # the design size and a local-crop size
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.equal(model(x), ours(x)[0])
    assert load_checkpoint(out / "final.pth")["teacher"]  # the run's checkpoint is untouched


def test_timm_weights_import_as_the_supervised_reference_and_compute_timms_features(tmp_path):
    """`--format timm`: a classifier-bearing timm Swin saved as timm's hub does (safetensors) imports into the
    matching architecture (classifier dropped) and gives timm's own pre-logits features at 224 px."""
    from safetensors.torch import save_file
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    supervised = SwinTransformer(
        img_size=224, embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7, num_classes=1000
    ).eval()  # timm's defaults otherwise, as swin_tiny_patch4_window7_224
    path = tmp_path / "model.safetensors"
    save_file(supervised.state_dict(), str(path))
    out = tmp_path / "imported.pth"
    proc = run_cli("import", "--official", str(path), "--format", "timm", "--arch", "swin_test_w7", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    ours = Backbone("swin_test_w7").eval()
    ours.load_state_dict({k.removeprefix("backbone."): v for k, v in load_checkpoint(out)["teacher"].items()})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = supervised.forward_head(supervised.forward_features(x), pre_logits=True)
        got, _ = ours(x)
    # the same weights; only LayerNorm's eps differs (timm 1e-5, the EsViT networks 1e-6)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    wrong = run_cli("import", "--official", str(path), "--arch", "swin_test_w7", "--out", str(tmp_path / "x.pth"))
    assert wrong.returncode == 1 and "--format timm" in wrong.stderr and "Traceback" not in wrong.stderr
