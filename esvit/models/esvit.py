"""Student / teacher network: backbone + view head + region head, applied to a list of multi-crop views.

Consecutive crops of equal size go through the backbone as one batch (docs/algorithm.md §1.2); the heads then run
once on everything (one large matmul each). The output keeps the groups apart, so the loss can batch all the
pairs that share a crop size.

With ``chunked_heads`` (the training default) the heads stop before their K-wide last layer: the groups hold the
normalised bottleneck embeddings and ``last_layers`` the weights that multiply them, and the loss applies them
a chunk of rows at a time (:mod:`esvit.losses.chunked`), so no [tokens, K] logits tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from esvit.models.backbones import Backbone
from esvit.models.heads import DINOHead

__all__ = ["EsViTNet", "GroupOutput", "LastLayers"]


@dataclass
class LastLayers:
    """The heads' last-layer weights [K, D] (view, region), each computed when called (the loss computes one
    at a time, and it is freed after use: four [K, D] weights never sit beside the activations together), and
    the precision their products run in (the autocast type when the heads ran under autocast)."""

    view: Callable[[], torch.Tensor]
    region: Callable[[], torch.Tensor] | None
    dtype: torch.dtype


@dataclass
class GroupOutput:
    """Outputs for ``n`` crops of one size: view logits [n, B, K]; region logits [B, n, T, K] and backbone
    region features [B, n, T, C], batch-major so the loss's per-image matrix products need no copy of the
    [.., K] logits (``None`` without the region head). With ``last_layers`` set (chunked heads), ``view`` and
    ``region`` hold the last layers' inputs ([n, B, D], [B, n, T, D]) instead of their outputs."""

    view: torch.Tensor
    region: torch.Tensor | None
    features: torch.Tensor | None
    last_layers: LastLayers | None = None

    @property
    def n_crops(self) -> int:
        return self.view.shape[0]


class EsViTNet(nn.Module):
    """``backbone`` + ``head`` (view) + ``head_dense`` (regions, absent when the region loss is off).

    ``chunked_heads``: return the last layers' inputs and weights instead of K-wide logits (see the module)."""

    def __init__(
        self,
        backbone: Backbone,
        out_dim: int = 65536,
        region: bool = True,
        norm_last_layer: bool = False,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        chunked_heads: bool = False,
    ):
        super().__init__()
        self.chunked_heads = chunked_heads
        self.backbone = backbone
        c = backbone.num_features
        self.head = DINOHead(c, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)
        self.head_dense = (
            DINOHead(c, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer) if region else None
        )

    def forward(self, crops: list[torch.Tensor]) -> list[GroupOutput]:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        counts = torch.unique_consecutive(sizes, return_counts=True)[1].tolist()
        pooled, tokens, start = [], [], 0
        for n in counts:
            p, t = self.backbone(torch.cat(crops[start : start + n]))
            pooled.append(p)
            tokens.append(t)
            start += n
        batch = crops[0].shape[0]
        chunked = self.chunked_heads
        head = self.head.embed if chunked else self.head
        view = head(torch.cat(pooled)).split([p.shape[0] for p in pooled])
        last = None
        if chunked:
            device = pooled[0].device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else view[0].dtype
            region_w = self.head_dense.last_layer.weight if self.head_dense is not None else None
            last = LastLayers(self.head.last_layer.weight, region_w, dtype)
        if self.head_dense is None:
            return [GroupOutput(v.unflatten(0, (n, batch)), None, None, last) for v, n in zip(view, counts)]
        # batch-major tokens [B, n, T, C]: reordering C-wide tokens here is far cheaper than K-wide logits later
        feats = [t.unflatten(0, (n, batch)).transpose(0, 1).contiguous() for t, n in zip(tokens, counts)]
        dense = self.head_dense.embed if chunked else self.head_dense
        region = dense(torch.cat([f.flatten(0, 2) for f in feats])).split([f[..., 0].numel() for f in feats])
        return [
            GroupOutput(v.unflatten(0, (n, batch)), r.view(*f.shape[:3], -1), f, last)
            for v, r, f, n in zip(view, region, feats, counts)
        ]
