"""The DINO projection head (docs/algorithm.md §1.1), used twice: on the pooled view feature and token-wise on regions.

Linear(C, 2048) - GELU - Linear(2048, 2048) - GELU - Linear(2048, 256) -> L2-normalise -> weight-normalised
Linear(256, out_dim, no bias) with weight_g initialised to 1. Parameter names match the official checkpoints
(``mlp.*``, ``last_layer.weight_g``, ``last_layer.weight_v``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DINOHead", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """``y = x @ (g * v / ||v||_row)^T``, no bias: ``torch.nn.utils.weight_norm`` written out, so the weight is
    computed once per forward (fast on CPU) and the names are the official ones."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def weight(self) -> torch.Tensor:
        # the per-row scale first: one pass over the [out, in] matrix instead of two
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight())


class DINOHead(nn.Module):
    """Args:
    in_dim: backbone channels C.
    out_dim: prototypes K (65536 in the paper).
    hidden_dim, bottleneck_dim, nlayers: the MLP (2048, 256, 3).
    norm_last_layer: freeze weight_g at 1 (the README commands use False).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim if nlayers > 1 else bottleneck_dim)]
        if nlayers > 1:
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's input: the MLP's output, L2-normalised ([.., bottleneck_dim])."""
        return F.normalize(self.mlp(x), dim=-1, p=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.embed(x))
