"""Backbones via timm behind one interface: ``forward(images) -> (pooled [B, C], tokens [B, T, C])``.

An architecture (``esvit/archs.py``: the names users write, their family and timm model) is built by timm and
read through its family's feature conventions (docs/algorithm.md §1.1, §2, §4), one adapter per family:

- Swin (``esvit/models/swin.py``, the official EsViT block at any input size): tokens = last-stage map after
  the final LayerNorm (eps 1e-6), pooled = their mean.
- ViL (``esvit/models/vil.py``, sliding-chunk + global-token attention) and CvT (``esvit/models/cvt.py``,
  convolutional projections, window attention): tokens = last-stage tokens after the final LayerNorm, pooled =
  their mean.
- ViT / DeiT (``esvit/models/vit.py``): pooled = [CLS] after the final norm, tokens = the patch tokens.
- ResNet-50 (``esvit/models/resnet.py``): tokens = the layer4 map flattened (no norm), pooled = their mean.
- PvT v1 (``esvit/models/pvt.py``): pooled = [CLS] after the final norm, tokens = the last-stage patch tokens
  after it.

Importing this module registers the EsViT variants with timm (``esvit_swin_tiny_w7``, ...), so
``timm.create_model(name, num_classes=0)`` builds the same network a checkpoint export loads into.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from esvit.archs import ARCHS
from esvit.errors import ConfigError
from esvit.fields import did_you_mean
from esvit.models.cvt import CvtFeatures
from esvit.models.features import Features
from esvit.models.pvt import PvtFeatures
from esvit.models.resnet import ResNetFeatures
from esvit.models.swin import SwinFeatures
from esvit.models.vil import VilFeatures
from esvit.models.vit import VitFeatures

__all__ = ["ARCHS", "Backbone", "FEATURES"]

# family (``esvit.archs.Arch.family``) -> its feature conventions
FEATURES: dict[str, type[Features]] = {
    "swin": SwinFeatures,
    "vil": VilFeatures,
    "cvt": CvtFeatures,
    "vit": VitFeatures,
    "resnet": ResNetFeatures,
    "pvt": PvtFeatures,
}


class Backbone(nn.Module):
    """A timm model plus its family's EsViT feature conventions.

    Attributes:
        net: the timm model (its ``state_dict`` is what an export writes).
        arch: the architecture's name (``esvit.archs.ARCHS``).
        family: the architecture's family (``esvit.archs.Arch.family``: ``swin``, ``vit``, ...).
        features: the family's conventions (``SwinFeatures``, ...), chosen once here.
        num_features: channels C of the pooled feature and of each token.
    """

    def __init__(self, arch: str, drop_path_rate: float = 0.0):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}.{did_you_mean(arch, ARCHS)}")
        spec = ARCHS[arch]
        self.arch, self.family = arch, spec.family
        self.features = FEATURES[spec.family]()
        self.net = self.features.create(spec.timm_name, drop_path_rate)
        self.num_features = self.net.num_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(pooled [B, C], tokens [B, T, C])``."""
        return self.features.pooled_and_tokens(self.net, x)

    def last_blocks(self, x: torch.Tensor, n: int = 4) -> torch.Tensor:
        """The ImageNet linear-probe feature (docs/algorithm.md §4): the outputs of the last ``n`` blocks concatenated.

        Swin: each block's output average-pooled (the final LayerNorm applied to last-stage blocks only);
        ViT: the [CLS] token of each of the last ``n`` blocks after the final norm; ResNet: the pooled feature;
        PvT: a last-stage block's [CLS] after the final norm, an earlier block's token mean.
        """
        return self.features.last_blocks(self.net, x, n)

    def pooled_and_last_blocks(self, x: torch.Tensor, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Both evaluation features from one pass: the last block's chunk of ``last_blocks`` is the pooled
        feature (Swin: final-norm average; ViT, PvT: final-norm [CLS]; ResNet: the pooled feature itself)."""
        blocks = self.last_blocks(x, n)
        return blocks[:, -self.num_features :], blocks
