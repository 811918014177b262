"""ResNet (timm's own ``resnet50``): its feature conventions."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from esvit.models.features import Features

__all__ = ["ResNetFeatures"]


class ResNetFeatures(Features):
    """ResNet: tokens = the layer4 map flattened (no norm), pooled = their mean; the linear probe takes the pooled
    feature. Its BatchNorm layers become SyncBatchNorm in multi-GPU training."""

    uses_batch_norm: ClassVar[bool] = True

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = net.forward_features(x).flatten(2).transpose(1, 2)
        return tokens.mean(1), tokens

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        return self.pooled_and_tokens(net, x)[0]
