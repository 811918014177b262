"""What a model family contributes to ``Backbone``: one small, stateless adapter class per family (``SwinFeatures``
in ``esvit/models/swin.py``, ``VitFeatures``, ``ResNetFeatures``), chosen once from the architecture's family, so
no method branches on a family name. A new family (e.g. ViL, CvT) adds its model file with its variants and its
``Features`` subclass, and one entry each in ``esvit.archs.ARCHS`` and ``esvit.models.backbones.FEATURES``.

The adapters take the timm model as an argument and hold no modules, so the backbone's state dict stays the timm
model's under ``net.`` (checkpoint import / export rely on those names).
"""

from __future__ import annotations

from typing import Any, ClassVar

import timm
import torch
import torch.nn as nn

__all__ = ["Features"]


class Features:
    """A family's feature conventions (docs/algorithm.md §1.1, §2, §4).

    Attributes:
        create_kwargs: extra ``timm.create_model`` arguments the family needs (e.g. ViT's ``dynamic_img_size``).
        uses_batch_norm: the network has BatchNorm layers (multi-GPU training converts them to SyncBatchNorm).
    """

    create_kwargs: ClassVar[dict[str, Any]] = {}
    uses_batch_norm: ClassVar[bool] = False

    def create(self, timm_name: str, drop_path_rate: float = 0.0) -> nn.Module:
        """The timm model without classifier (``num_features`` channels out), randomly initialised."""
        return timm.create_model(
            timm_name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **self.create_kwargs
        )

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled [B, C], tokens [B, T, C])``: the view feature and the region tokens."""
        raise NotImplementedError

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        """The linear-probe feature [B, n_blocks * C'] whose last ``num_features`` columns are the pooled feature."""
        raise NotImplementedError

    def filter_state_dict(self, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
        """An official backbone state dict (prefixes and heads already stripped) -> the timm model's keys."""
        return state
