"""``logsumexp(x / tau)`` over the last dimension, fused for wide logits (K = 65536).

Autograd's version allocates several [.., K] temporaries (x / tau, x - max, exp) and its backward several
more; on CPU these memory passes cost as much as the heads' matrix products. This one keeps a single
[.., K] buffer: exp((x - max) / tau), normalised in place into the softmax that the backward needs
(d lse / dx = softmax(x / tau) / tau).
"""

from __future__ import annotations

import torch

__all__ = ["scaled_logsumexp"]


class _ScaledLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, inv_tau: float) -> torch.Tensor:
        m = x.amax(dim=-1, keepdim=True)
        e = torch.sub(x, m).mul_(inv_tau).exp_()
        s = e.sum(dim=-1, keepdim=True)
        ctx.save_for_backward(e.div_(s))  # the softmax
        ctx.inv_tau = inv_tau
        return (s.log_() + m * inv_tau).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (softmax,) = ctx.saved_tensors
        return softmax * (grad * ctx.inv_tau).unsqueeze(-1), None


def scaled_logsumexp(x: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """``logsumexp(x * inv_tau, dim=-1)`` with a single [.., K] buffer in forward and backward."""
    return _ScaledLogSumExp.apply(x, inv_tau)
