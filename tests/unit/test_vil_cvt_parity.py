"""ViL and CvT against the official EsViT networks, checked on their real outputs and files
(tests/fixtures/official/README.md):

- the official ``MsViT`` (ViL) and ``CvT`` (cvt_v4) at a 4-wide size, random weights, every crop size: tokens,
  pooled view feature and the last-4-blocks feature;
- checkpoints exactly as ``main_esvit.py`` saves them for ``--arch vil_2262`` / ``cvt_tiny`` (the CvT teacher,
  wrapped in DDP for its BatchNorm, carries ``module.``), imported, evaluated by ``esvit extract``, exported to
  timm strictly.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from esvit.checkpoint_file import load_checkpoint
from esvit.models import Backbone
from esvit.models.checkpoint import export_backbone, filter_state_dict, load_official_checkpoint
from tests.conftest import OFFICIAL_FIXTURES as FIXTURES
from tests.conftest import official_checkpoint as official_file
from tests.conftest import run_cli

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CASES = [("vil", s) for s in ("96", "112", "160", "192", "224")] + [
    ("cvt", s) for s in ("96", "112", "128", "160", "192", "224")
]


@pytest.fixture(scope="module")
def official() -> dict:
    return {f: torch.load(FIXTURES / f"{f}_outputs.pt", weights_only=True) for f in ("vil", "cvt")}


def normalised(image: torch.Tensor) -> torch.Tensor:
    return (image.float() / 255 - MEAN) / STD


def loaded(family: str, ref: dict) -> Backbone:
    net = Backbone(f"{family}_test").eval()
    net.net.load_state_dict(filter_state_dict(ref["state_dict"], net), strict=True)  # the import path
    return net


@pytest.mark.parametrize("family,size", CASES)
def test_matches_the_official_network_at_every_crop_size(official, family, size):
    """Every size the official network runs at (ViL fails at 128 px itself: see the next test)."""
    ref = official[family]
    net = loaded(family, ref)
    want = ref["outputs"][size]
    x = normalised(want["image"])
    with torch.no_grad():
        pooled, tokens = net(x)
        last4 = net.last_blocks(x, 4)
    for name, got in (("tokens", tokens), ("pooled", pooled), ("last4", last4)):
        assert got.shape == want[name].shape, name
        diff = (got - want[name]).abs().max().item()
        assert diff <= 1e-5, f"{family} {size}px {name}: max |difference| {diff:.3g} from the official network"


def test_the_fixture_covers_what_the_official_vil_cannot_run(official):
    """The official ViL fails at 128 px (its bicubic resampling of the full-attention bias rounds 64 tokens down to
    63); here the bias is resampled to the exact size and the network runs."""
    assert "128" not in official["vil"]["outputs"] and "128" in str(official["vil"]["meta"]["fails"])
    net = loaded("vil", official["vil"])
    with torch.no_grad():
        pooled, tokens = net(torch.randn(2, 3, 128, 128))
    assert tokens.shape == (2, 16, 32) and torch.isfinite(tokens).all()


@pytest.mark.parametrize("family", ["vil", "cvt"])
def test_the_registered_timm_model_is_the_official_network(official, family):
    """What `esvit export` targets: ``timm.create_model("esvit_<family>_test", num_classes=0)``."""
    ref = official[family]
    model = timm.create_model(f"esvit_{family}_test", num_classes=0).eval()
    model.load_state_dict(filter_state_dict(ref["state_dict"], Backbone(f"{family}_test")), strict=True)
    with torch.no_grad():
        got = model(normalised(ref["outputs"]["96"]["image"]))
    torch.testing.assert_close(got, ref["outputs"]["96"]["pooled"], rtol=0, atol=1e-5)


def test_vil_sampled_neighbours_are_a_training_mode_only(official):
    """Official MODE 1: in training each sliding-chunk layer sees its own chunk plus one random neighbour (so the
    output changes from draw to draw); evaluation uses all nine chunks (the fixture's numbers)."""
    net = loaded("vil", official["vil"])
    x = normalised(official["vil"]["outputs"]["224"]["image"])
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = {tuple(net(x)[0][0, :3].tolist()) for _ in range(4)}
    assert len(draws) > 1
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], official["vil"]["outputs"]["224"]["pooled"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ official checkpoints as main_esvit.py saves them


@pytest.mark.parametrize(
    "family,official_arch,ours,theirs",
    [
        ("vil", "vil_2262", "stages.2.blocks.1.attn.qkv.weight", "layer3.3.attn.qkv.weight"),
        ("cvt", "cvt_tiny", "stages.3.blocks.1.attn.qkv.dw.weight", "module.stage3.1.layers.1.0.fn.qkv.dw.weight"),
    ],
)
def test_official_checkpoint_imports_extracts_and_exports(tmp_path, digits_shards, family, official_arch, ours, theirs):
    official = official_file(tmp_path, f"official_layout_{family}_vr")
    ckpt = load_official_checkpoint(official)
    assert ckpt["args"].arch == official_arch and ckpt["epoch"] == 201
    out = tmp_path / "imported.pth"
    proc = run_cli("import", "--official", str(official), "--arch", f"{family}_test", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "imported.import.json").read_text())  # what the report reads
    assert record["tasks"] == "V+R" and record["arch"] == f"{family}_test"  # from the run's --use_dense_prediction
    imported = load_checkpoint(out)["teacher"]
    assert torch.equal(imported[f"backbone.net.{ours}"], ckpt["teacher"][theirs])
    prefix = "module." if theirs.startswith("module.") else ""
    assert torch.equal(imported["backbone.net.norm.weight"], ckpt["teacher"][f"{prefix}norm.weight"])
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
    path, name = export_backbone(out, tmp_path / "backbone.pth")
    assert name == f"esvit_{family}_test"
    model = timm.create_model(name, num_classes=0).eval()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 96, 96)
    net = Backbone(f"{family}_test").eval()
    net.net.load_state_dict(filter_state_dict(ckpt["teacher"], net), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["cvt_test", "swin_test_w7", "pvt_test", "resnet50"])
def test_a_vil_checkpoint_named_as_another_family_is_refused_naming_both(tmp_path, arch):
    """A ViL file given another family's arch: one message naming what the file holds and the archs to use, not a
    traceback (timm's Swin filter used to raise AttributeError on ViL keys) nor a partial load."""
    official = official_file(tmp_path, "official_layout_vil_vr")
    proc = run_cli("import", "--official", str(official), "--arch", arch, "--out", str(tmp_path / "x.pth"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"holds a ViL network (its keys), not {arch}" in proc.stderr and "vil_tiny" in proc.stderr
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("family", ["vil", "cvt"])
def test_a_bare_state_dict_is_not_taken_for_an_official_training_checkpoint(tmp_path, official, family):
    """A plain backbone state dict says nothing about how it was trained: as ``--format official`` it is refused
    (it would otherwise be reported beside the paper's EsViT row), ``--format timm`` imports it without tasks."""
    bare = tmp_path / "bare.pth"
    torch.save(official[family]["state_dict"], bare)
    proc = run_cli("import", "--official", str(bare), "--arch", f"{family}_test", "--out", str(tmp_path / "x.pth"))
    assert proc.returncode != 0 and "plain backbone state dict" in proc.stderr and "--format timm" in proc.stderr
    out = tmp_path / "y.pth"
    args = ("import", "--official", str(bare), "--format", "timm", "--arch", f"{family}_test", "--out", str(out))
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "y.import.json").read_text())["tasks"] is None


def test_an_official_checkpoint_given_to_export_says_to_import_it_first(tmp_path):
    official = official_file(tmp_path, "official_layout_cvt_vr")
    proc = run_cli("export", "--checkpoint", str(official), "--out", str(tmp_path / "b.pth"))
    assert proc.returncode != 0 and "looks like an official EsViT checkpoint" in proc.stderr
    assert "esvit import --official" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("family", ["vil", "cvt"])
def test_the_timm_model_runs_cast_to_bfloat16(official, family):
    """``model.bfloat16()`` (CvT's channel LayerNorm computes in float32 and must cast its own weights too)."""
    ref = official[family]
    model = timm.create_model(f"esvit_{family}_test", num_classes=0).eval()
    model.load_state_dict(filter_state_dict(ref["state_dict"], Backbone(f"{family}_test")), strict=True)
    x = normalised(ref["outputs"]["96"]["image"])
    with torch.no_grad():
        got = model.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref["outputs"]["96"]["pooled"], rtol=0.05, atol=0.1)


def test_extract_below_the_smallest_input_is_one_message(tmp_path, digits_shards):
    args = ("--random-init", "--arch", "vil_test", "--shards", str(digits_shards), "--image-size", "24")
    proc = run_cli("extract", *args, "--out", str(tmp_path / "f.pt"), "--no-progress")
    assert proc.returncode == 2 and "vil_test needs images of at least 32 px" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "f.pt").exists()
