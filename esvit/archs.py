"""The architectures the pipeline knows, under the one name users write (``model.arch: swin_tiny_w7``), as plain
data: no torch import, so configs are validated against these names before anything heavy is loaded (e.g. when
Snakemake plans a run).

A name's timm model follows by one rule:

- our own variants: ``esvit_`` + the name (``swin_tiny_w7`` -> ``esvit_swin_tiny_w7``), each one
  ``@register_model`` function in its family's model file (``esvit/models/swin.py``);
- timm's own models: the timm name in their entry below (``vit_small`` -> ``vit_small_patch16_224``).

Each family's feature conventions (``(pooled, tokens)``, the linear-probe blocks) live with its model file
(``esvit.models.backbones.FEATURES``). ``tests/unit/test_models.py`` checks that this table and timm's registry
agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHS", "Arch", "OWN_PREFIX", "arch_names"]

OWN_PREFIX = "esvit_"  # timm name of our own variants = OWN_PREFIX + the name users write


@dataclass(frozen=True)
class Arch:
    """One architecture.

    Attributes:
        family: the model family (``swin``, ``vil``, ``cvt``, ``pvt``, ``vit``, ``resnet``): which feature
            conventions apply.
        timm_name: what ``timm.create_model`` builds (and what ``esvit export`` output loads into).
        min_input: the smallest input side in pixels the network takes (one patch; ResNet, PvT: the total stride).
    """

    family: str
    timm_name: str
    min_input: int


def _own(family: str, min_input: int, names: tuple[str, ...]) -> dict[str, Arch]:
    """Our own variants of one family: registered with timm as ``OWN_PREFIX + name``."""
    return {name: Arch(family, OWN_PREFIX + name, min_input) for name in names}


ARCHS: dict[str, Arch] = {
    # EsViT Swin (esvit/models/swin.py; patch 4)
    **_own(
        "swin",
        min_input=4,
        names=(
            "swin_tiny_w7",
            "swin_small_w7",
            "swin_base_w7",
            "swin_tiny_w14",
            "swin_small_w14",
            "swin_base_w14",
            "swin_nano",  # small variants for CPU demos and tests
            "swin_pico",
            "swin_femto",
            "swin_test_w7",  # 4-wide: the shapes of the official-network fixtures in tests/
            "swin_test_w14",
        ),
    ),
    # EsViT ViL (esvit/models/vil.py; total stride 32)
    **_own("vil", min_input=32, names=("vil_tiny", "vil_nano", "vil_test")),
    # EsViT CvT (esvit/models/cvt.py; first convolution stride 4)
    **_own("cvt", min_input=4, names=("cvt_tiny", "cvt_nano", "cvt_test")),
    # timm's own models under a short name (feature conventions: esvit/models/vit.py, esvit/models/resnet.py)
    "vit_small": Arch("vit", timm_name="vit_small_patch16_224", min_input=16),
    "vit_base": Arch("vit", timm_name="vit_base_patch16_224", min_input=16),
    "deit_small": Arch("vit", timm_name="deit_small_patch16_224", min_input=16),
    "resnet50": Arch("resnet", timm_name="resnet50", min_input=32),
    # PvT v1 (esvit/models/pvt.py; total stride 32: one last-stage token)
    **_own(
        "pvt",
        min_input=32,
        names=(
            "pvt_tiny",  # the paper's PvT-T (Table 4): v1's PVT-Small depths 3-4-6-3, 24 M parameters
            "pvt_test",  # 4-wide: the shape of the official-network fixture in tests/
        ),
    ),
}


def arch_names() -> tuple[str, ...]:
    """The names a config's ``arch`` may take (the ``choices`` of the config fields that name an architecture)."""
    return tuple(ARCHS)
