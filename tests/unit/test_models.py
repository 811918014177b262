"""Backbones and heads: the (pooled, tokens) interface over the registry, timm registration, conventions."""

from __future__ import annotations

import pytest
import timm
import torch

from esvit.archs import OWN_PREFIX
from esvit.models import ARCHS, Backbone, DINOHead, EsViTNet
from esvit.models.backbones import FEATURES

# arch -> (C, tokens at 224, tokens at 96)
EXPECTED = {
    "swin_tiny_w7": (768, 49, 9),
    "swin_small_w7": (768, 49, 9),
    "swin_base_w7": (1024, 49, 9),
    "swin_tiny_w14": (768, 49, 9),
    "swin_small_w14": (768, 49, 9),
    "swin_base_w14": (1024, 49, 9),
    "swin_nano": (384, 49, 9),
    "swin_pico": (192, 49, 9),
    "swin_femto": (96, 784, 144),
    "swin_test_w7": (32, 49, 9),
    "swin_test_w14": (32, 49, 9),
    "vil_tiny": (768, 49, 9),
    "vil_nano": (256, 49, 9),
    "vil_test": (32, 49, 9),
    "cvt_tiny": (768, 49, 9),
    "cvt_nano": (256, 49, 9),
    "cvt_test": (32, 49, 9),
    "vit_small": (384, 196, 36),
    "vit_base": (768, 196, 36),
    "deit_small": (384, 196, 36),
    "resnet50": (2048, 49, 9),
    "pvt_tiny": (512, 49, 9),
    "pvt_test": (32, 49, 9),
}


def test_every_registered_arch_is_covered():
    assert set(EXPECTED) == set(ARCHS)


def test_the_torch_free_names_and_the_timm_registry_agree():
    """``esvit/archs.py`` (no torch) and the registered models name the same networks: every name builds through
    its timm name, and every registered EsViT model has a name (in the model file of its family)."""
    own = {spec.timm_name for spec in ARCHS.values() if spec.timm_name.startswith(OWN_PREFIX)}
    assert own == {OWN_PREFIX + arch for arch, spec in ARCHS.items() if spec.timm_name.startswith(OWN_PREFIX)}
    assert set(timm.list_models(f"{OWN_PREFIX}*")) == own
    for family in {spec.family for spec in ARCHS.values() if spec.timm_name in own}:  # esvit/models/<family>.py
        listed = {spec.timm_name for spec in ARCHS.values() if spec.family == family}
        assert set(timm.list_models(module=family)) == listed, family
    for arch, spec in ARCHS.items():
        assert timm.is_model(spec.timm_name) and spec.family in FEATURES, arch
        with torch.device("meta"):  # no weights initialised: the structure only
            net = Backbone(arch)
        assert net.num_features == EXPECTED[arch][0], arch


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_interface_shapes_at_global_and_local_sizes(arch):
    torch.manual_seed(0)
    net = Backbone(arch).eval()
    c, t224, t96 = EXPECTED[arch]
    with torch.no_grad():
        for size, tokens in ((224, t224), (96, t96)):
            pooled, toks = net(torch.randn(2, 3, size, size))
            assert pooled.shape == (2, c) and toks.shape == (2, tokens, c)
            if net.family not in ("vit", "pvt"):  # no class token: the view feature is the mean of the region tokens
                torch.testing.assert_close(pooled, toks.mean(1))
        x = torch.randn(2, 3, 96, 96)
        one_pass_pooled, blocks = net.pooled_and_last_blocks(x)  # what `esvit extract` caches, from one pass
        torch.testing.assert_close(one_pass_pooled, net(x)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(blocks, net.last_blocks(x))
        smallest = ARCHS[arch].min_input  # what config validation allows (esvit/archs.py): one token
        assert net(torch.randn(1, 3, smallest, smallest))[1].shape == (1, 1, c)


def test_swin_conventions_match_timm_and_the_reference():
    net = Backbone("swin_tiny_w7").eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    plain = timm.create_model("esvit_swin_tiny_w7", num_classes=0).eval()
    plain.load_state_dict(net.net.state_dict(), strict=True)  # what an export loads into
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(plain(x), net(x)[0])  # timm's pooled feature = ours
        assert net.last_blocks(x, 4).shape == (1, 2304)  # 2 x 384 (stage 3) + 2 x 768 (stage 4), docs/algorithm.md §4
        assert Backbone("vit_small").last_blocks(x, 4).shape == (1, 4 * 384)


def test_dino_head_shapes_normalisation_and_frozen_g():
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16, norm_last_layer=True)
    assert not head.last_layer.weight_g.requires_grad and torch.all(head.last_layer.weight_g == 1)
    w = head.last_layer.weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(100))  # g = 1 -> unit rows
    assert head(torch.randn(5, 32)).shape == (5, 100)
    assert DINOHead(32, out_dim=100).last_layer.weight_g.requires_grad


def test_net_groups_crops_by_size_and_keeps_regions_batch_major():
    net = EsViTNet(Backbone("swin_pico"), out_dim=50, hidden_dim=32, bottleneck_dim=8)
    crops = [torch.randn(3, 3, 64, 64)] * 2 + [torch.randn(3, 3, 32, 32)] * 4
    out = net(crops)
    assert [g.n_crops for g in out] == [2, 4]
    assert (
        out[0].view.shape == (2, 3, 50)
        and out[0].region.shape == (3, 2, 4, 50)
        and out[0].features.shape == (3, 2, 4, 192)
    )
    assert out[1].region.shape == (3, 4, 1, 50)
    view_only = EsViTNet(Backbone("swin_pico"), out_dim=50, region=False, hidden_dim=32, bottleneck_dim=8)
    assert view_only.head_dense is None and view_only(crops)[1].region is None


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_heads_return_what_the_last_layers_multiply(autocast):
    """Chunked heads stop before the last layer: embeddings x the returned weights = the unchunked logits (and the
    products' precision is the autocast type when the heads ran under autocast)."""
    torch.manual_seed(0)
    net = EsViTNet(Backbone("swin_pico"), out_dim=50, hidden_dim=32, bottleneck_dim=8)
    crops = [torch.randn(3, 3, 64, 64)] * 2 + [torch.randn(3, 3, 32, 32)] * 4
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = net(crops)
        net.chunked_heads = True
        chunked = net(crops)
    assert chunked[0].last_layers.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert chunked[0].view.shape == (2, 3, 8) and chunked[1].region.shape == (3, 4, 1, 8)
    for p, c in zip(plain, chunked):
        d = c.last_layers.dtype
        torch.testing.assert_close(p.view, (c.view.to(d) @ c.last_layers.view().to(d).T).to(p.view.dtype))
        torch.testing.assert_close(p.region, (c.region.to(d) @ c.last_layers.region().to(d).T).to(p.region.dtype))
        assert torch.equal(p.features, c.features)
