"""The architectures the pipeline knows, as plain data (no torch import: configs are validated against these
names before anything heavy is loaded, e.g. when Snakemake plans a run). ``esvit.models.backbones`` builds and
registers the networks from this table.
"""

from __future__ import annotations

__all__ = ["ARCHS", "SWIN"]

SWIN = {
    # name: (embed_dim, depths, num_heads, window, design image size: windows are clamped for its maps)
    "esvit_swin_tiny_w7": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "esvit_swin_small_w7": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "esvit_swin_base_w7": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "esvit_swin_tiny_w14": (96, (2, 2, 6, 2), (3, 6, 12, 24), 14, 224),
    "esvit_swin_small_w14": (96, (2, 2, 18, 2), (3, 6, 12, 24), 14, 224),
    "esvit_swin_base_w14": (128, (2, 2, 18, 2), (4, 8, 16, 32), 14, 224),
    # small variants for CPU demos and tests: 64-px global crops (maps 16-8-4-2), window 4
    "esvit_swin_nano": (48, (1, 1, 3, 1), (3, 6, 12, 24), 4, 64),
    "esvit_swin_pico": (24, (1, 1, 1, 1), (1, 2, 3, 6), 4, 64),
    # the demo's model: two stages (one merge), so a 32-px crop ends at 4 x 4 region tokens and a 16-px local
    # crop at 2 x 2, as 224 / 96 px end at 7 x 7 / 3 x 3 in Swin-T (the region loss needs many tokens)
    "esvit_swin_femto": (48, (1, 1), (2, 4), 4, 32),
    # 4-wide test models (as timm's test_* models): the shapes of the official-network fixtures in tests/
    "esvit_swin_test_w7": (4, (2, 2, 2, 2), (1, 1, 2, 2), 7, 224),
    "esvit_swin_test_w14": (4, (2, 2, 2, 2), (1, 1, 2, 2), 14, 224),
}

# Architectures the pipeline knows: short name -> (timm name, family, timm kwargs).
ARCHS: dict[str, tuple[str, str, dict]] = {
    **{n.removeprefix("esvit_"): (n, "swin", {}) for n in SWIN},
    "vit_small": ("vit_small_patch16_224", "vit", {"dynamic_img_size": True}),
    "vit_base": ("vit_base_patch16_224", "vit", {"dynamic_img_size": True}),
    "deit_small": ("deit_small_patch16_224", "vit", {"dynamic_img_size": True}),
    "resnet50": ("resnet50", "resnet", {}),
}


