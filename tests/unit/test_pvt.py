"""PvT v1 (``esvit/models/pvt.py``) against the official v1 network's outputs (``tests/fixtures/official/README.md``,
``pvt_outputs.pt``): every crop size, the feature conventions, timm registration, official weights, gradients."""

from __future__ import annotations

import pytest
import timm
import torch

from esvit.models import Backbone
from esvit.models.checkpoint import filter_state_dict
from esvit.models.pvt import PvtFeatures
from tests.conftest import OFFICIAL_FIXTURES as FIXTURES

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZES = (96, 112, 160, 224)
TOKENS = {96: 9, 112: 9, 160: 25, 224: 49}  # (S // 32) ** 2 last-stage tokens


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURES / "pvt_outputs.pt", weights_only=True)


def image(size: int, official: dict) -> torch.Tensor:
    """The fixture's input at ``size`` px, regenerated from its recipe (checked against the stored pixel sum)."""
    img = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
    assert int(img.long().sum()) == official["meta"]["image_sums"][size]
    return (img.float() / 255 - MEAN) / STD


def official_backbone(official: dict) -> Backbone:
    """``Backbone("pvt_test")`` holding the official network's weights, loaded strictly by the import path."""
    net = Backbone("pvt_test").eval()
    net.net.load_state_dict(filter_state_dict(official["state_dict"], net), strict=True)
    return net


def max_diffs(net: Backbone, official: dict, size: int) -> dict[str, float]:
    """Max |ours - official| of the pooled feature, the tokens and the last-4-blocks feature at ``size`` px."""
    x = image(size, official)
    want = official["outputs"][size]
    with torch.no_grad():
        pooled, tokens = net(x)
        last4 = net.last_blocks(x, 4)
    return {
        "pooled": (pooled - want["pooled"]).abs().max().item(),
        "tokens": (tokens - want["final_norm"][:, 1:]).abs().max().item(),
        "last4": (last4 - want["last4"]).abs().max().item(),
    }


@pytest.mark.parametrize("size", SIZES)
def test_matches_the_official_v1_network_at_every_crop_size(official, size):
    """[CLS] feature, final-norm tokens and last-4-blocks feature equal the official network's (whai362/PVT v1,
    perturbed random weights, uint8 images) to float rounding; sizes other than 224 px resize the position
    embeddings."""
    net = official_backbone(official)
    x = image(size, official)
    with torch.no_grad():
        pooled, tokens = net(x)
    assert pooled.shape == (2, 32) and tokens.shape == (2, TOKENS[size], 32)
    diffs = max_diffs(net, official, size)
    assert all(d <= 1e-5 for d in diffs.values()), f"{size}px: max |difference| from the official network {diffs}"


@pytest.mark.parametrize(
    "key", ["pos_embed1", "pos_embed4", "cls_token", "patch_embed1.norm.weight", "block1.0.attn.sr.weight", "norm.bias"]
)
def test_the_comparison_fails_for_one_moved_weight(official, key):
    """The fixture test can fail: one weight moved by 1e-3 (here one of the position embeddings, the class token,
    a patch-embedding norm, a spatial reduction, the final norm) moves the output beyond its 1e-5 tolerance."""
    net = official_backbone(official)
    with torch.no_grad():
        net.net.state_dict()[key].view(-1)[0] += 1e-3
    diffs = {size: max_diffs(net, official, size) for size in (96, 224)}
    assert max(max(d.values()) for d in diffs.values()) > 1e-5, diffs


def test_layer_norm_eps_as_the_official_code():
    """eps 1e-6 in the blocks and the final norm (v1's ``norm_layer``), 1e-5 in the patch embeddings and the
    spatial reductions (the official code builds them with ``nn.LayerNorm(dim)``). The last one changes the
    4-wide fixture's outputs by only ~3e-6, so it is checked here."""
    net = timm.create_model("esvit_pvt_test", num_classes=0)
    eps = {name: m.eps for name, m in net.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    small = {n for n in eps if n == "norm" or n.endswith(("norm1", "norm2"))}
    assert len(small) == 2 * 8 + 1 and all(eps[n] == 1e-6 for n in small)
    assert sum(n.endswith("attn.norm") for n in eps) == 6  # sr 8-4-2 in stages 1-3, 2 blocks each
    assert all(eps[n] == 1e-5 for n in set(eps) - small)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_last_blocks_equals_a_naive_loop(official, n):
    """Each of the last ``n`` blocks' outputs, captured by hooks: last-stage ones -> [CLS] after the final norm,
    earlier ones -> token mean; concatenated in order, the last ``num_features`` columns are the pooled feature."""
    net = official_backbone(official)
    x = image(96, official)
    blocks = [(stage, blk) for stage in range(4) for blk in getattr(net.net, f"block{stage + 1}")]
    outputs = []
    hooks = [blk.register_forward_hook(lambda m, i, o, s=stage: outputs.append((s, o))) for stage, blk in blocks]
    with torch.no_grad():
        pooled, _ = net(x)
        for h in hooks:
            h.remove()
        want = torch.cat([net.net.norm(o)[:, 0] if s == 3 else o.mean(1) for s, o in outputs[-n:]], dim=-1)
        got = net.last_blocks(x, n)
        one_pass_pooled, blocks_again = net.pooled_and_last_blocks(x, n)
    assert len(outputs) == 8 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, -32:], pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(one_pass_pooled, pooled, rtol=0, atol=1e-6)
    assert torch.equal(blocks_again, got)


def test_timm_builds_the_variants_and_loads_the_official_state_dict(official):
    """``timm.create_model`` builds both variants; the official state dict loads strictly into the headless net
    (its classifier, when present, dropped), and into a net with a classifier as it is; parameter counts."""
    net = timm.create_model("esvit_pvt_test", num_classes=0)
    assert net.num_features == 32
    state = dict(official["state_dict"])
    net.load_state_dict(PvtFeatures().filter_state_dict(state, net), strict=True)
    with_head = {**state, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}
    net.load_state_dict(PvtFeatures().filter_state_dict(with_head, net), strict=True)
    classifier = timm.create_model("esvit_pvt_test", num_classes=10)
    classifier.load_state_dict(PvtFeatures().filter_state_dict(with_head, classifier), strict=True)
    with torch.device("meta"):  # the structure only
        tiny = timm.create_model("esvit_pvt_tiny", num_classes=0)
        tiny_1k = timm.create_model("esvit_pvt_tiny")
    assert tiny.num_features == 512
    assert sum(p.numel() for p in tiny.parameters()) == 23_972_864  # the official pvt_small's, without head
    assert sum(p.numel() for p in tiny_1k.parameters()) == 24_485_864  # with its 1000-class head


def test_gradients_reach_every_parameter():
    """A training step's loss on the pooled feature and the tokens reaches every parameter, the class token and
    every position embedding included (at 96 px, where the embeddings are resized)."""
    torch.manual_seed(0)
    net = Backbone("pvt_test", drop_path_rate=0.1).train()
    pooled, tokens = net(torch.randn(2, 3, 96, 96))
    (pooled.square().sum() + tokens.square().sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_backbone_forward_at_global_and_local_sizes():
    """The tiny backbone's (pooled, tokens) at a 224-px global and a 96-px local crop, and the smallest input."""
    torch.manual_seed(0)
    net = Backbone("pvt_test").eval()
    with torch.no_grad():
        for size, tokens in ((224, 49), (96, 9), (32, 1)):
            pooled, toks = net(torch.randn(3, 3, size, size))
            assert pooled.shape == (3, 32) and toks.shape == (3, tokens, 32)
            assert torch.isfinite(pooled).all() and torch.isfinite(toks).all()
