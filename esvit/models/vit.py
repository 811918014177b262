"""ViT / DeiT (timm's own models, ``vit_small`` -> ``vit_small_patch16_224`` in ``esvit/archs.py``): their feature
conventions."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from esvit.models.features import Features

__all__ = ["VitFeatures"]


class VitFeatures(Features):
    """ViT / DeiT: pooled = [CLS] after the final norm, tokens = the patch tokens; any input size
    (``dynamic_img_size=True``). Linear probe: the [CLS] token of each of the last ``n`` blocks after the final
    norm, concatenated."""

    create_kwargs: ClassVar[dict[str, Any]] = {"dynamic_img_size": True}

    def pooled_and_tokens(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net.forward_features(x)
        return f[:, 0], f[:, net.num_prefix_tokens :]

    def last_blocks(self, net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        inter = net.forward_intermediates(
            x, indices=n, norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
        return torch.cat([prefix[:, 0] for _, prefix in inter], dim=-1)
