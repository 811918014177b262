"""The heads' last layer, the teacher softmax and the cross-entropy, fused and computed a chunk of rows at a time.

The loss of the view and region tasks is a sum over (teacher row j, student row i) pairs with weights a_p::

    L = sum_p a_p * CE(q_j, s_i),   CE(q, s) = logsumexp(s / tau_s) - (q . s) / tau_s,
    s_i = W z_i (student logits),   q_j = softmax((W_t z_t,j - c) / tau_t) (teacher, no gradient)

with ``z`` the heads' L2-normalised bottleneck embeddings (D = 256) and ``W`` the weight-normalised last layer
[K, D]. Written this way nothing of size [rows, K] has to exist at once:

* ``q_j . s_i = (W^T q_j) . z_i``: the teacher's probabilities enter only through ``P_j = W^T q_j`` [D], computed
  for a chunk of teacher rows at a time (and the teacher's logit sums for the centre on the way);
* ``sum_p a_p logsumexp(s_i / tau_s) = sum_i A_i logsumexp(s_i / tau_s)``, ``A_i = sum_{p: i_p = i} a_p``, a chunk of
  student rows at a time.

The loss is a scalar at the end of the graph, so the gradients with respect to ``z`` and ``W`` are computed in the
same pass as the value (the chunk's softmax is at hand then) and kept, [N, D] and [K, D]; the backward only
scales them. Nothing is recomputed and no [rows, K] tensor is saved for backward - the memory the unchunked
heads spend on logits, probabilities and their gradients (several GB per GPU at the paper's batch) is gone.
The same products are done in the same precision as the unchunked path: the K-wide matrix products in
``dtype`` (bf16 under autocast, as the heads' last layer would run), softmax and sums in fp32 (fp64 inputs
stay fp64).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["fused_cross_entropy", "default_chunk_rows"]


def default_chunk_rows(out_dim: int, device: torch.device | str) -> int:
    """Rows per chunk: a [rows, K] fp32 block of 128 MB on CPU, 1 GB on GPUs - enough rows for the matrix products
    to run at full speed (on CPU, 32-row chunks make the loss 2x slower than 512-row ones at K = 65,536)."""
    budget = 2**27 if torch.device(device).type == "cpu" else 2**30
    return max(1, budget // (4 * out_dim))


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, alpha: float) -> None:
    """``out += alpha * a @ b`` with the product in ``dtype`` (in place, without a [K, D] temporary when it can)."""
    if a.dtype == b.dtype == out.dtype == dtype:
        torch.addmm(out, a, b, alpha=alpha, out=out)  # (not addmm_: torch's FLOP counter misses in-place products)
    else:
        out.add_((a.to(dtype) @ b.to(dtype)).to(out.dtype), alpha=alpha)


def _chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_s, w_s, z_t, w_t, center, student_rows, teacher_rows, pair_weights, inv_tau_s, inv_tau_t,
                dtype, rows):  # fmt: skip
        acc = torch.promote_types(z_s.dtype, torch.float32)  # fp32, or fp64 when given
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n, k = z_s.shape[0], w_s.shape[0]
        ws, wt = w_s.to(dtype), w_t.to(dtype)
        zs, zt = z_s.to(dtype), z_t.to(dtype)
        a = pair_weights.to(acc)
        # per student row: the summed weights of its pairs (the logsumexp coefficient)
        coef = torch.zeros(n, dtype=acc, device=z_s.device).index_add_(0, student_rows, a)
        grad_w = torch.zeros(k, w_s.shape[1], dtype=acc, device=w_s.device) if need_grad else None
        if need_grad:  # sum_{p: j_p = j} a_p z_i / tau_s per teacher row: the teacher side of dL/dW is Q^T Z~
            z_tilde = torch.zeros(z_t.shape[0], z_s.shape[1], dtype=acc, device=z_s.device)
            z_tilde.index_add_(0, teacher_rows, z_s.to(acc).index_select(0, student_rows) * (a * inv_tau_s)[:, None])
        proj = torch.empty(z_t.shape[0], z_s.shape[1], dtype=acc, device=z_s.device)  # P = Q W
        center_sum = torch.zeros(1, k, dtype=acc, device=z_s.device)
        center = center.to(acc)
        for r in _chunks(z_t.shape[0], rows):
            logits = (zt[r] @ wt.T).to(acc)
            center_sum += logits.sum(0, keepdim=True)
            q = torch.softmax(logits.sub_(center).mul_(inv_tau_t), dim=-1)
            proj[r] = (q.to(dtype) @ ws).to(acc)
            if need_grad:
                _add_product(grad_w, q.T, z_tilde[r], dtype, -1.0)
            del logits, q
        matched = (proj.index_select(0, teacher_rows) * z_s.to(acc).index_select(0, student_rows)).sum(-1)
        loss = -(a * matched).sum() * inv_tau_s
        grad_z = None
        if need_grad:
            grad_z = torch.zeros(n, z_s.shape[1], dtype=acc, device=z_s.device)
            grad_z.index_add_(0, student_rows, proj.index_select(0, teacher_rows) * (-a * inv_tau_s)[:, None])
        del proj
        for r in _chunks(n, rows):
            logits = (zs[r] @ ws.T).to(acc)
            m = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(m).mul_(inv_tau_s).exp_()
            total = e.sum(dim=-1, keepdim=True)
            loss = loss + (coef[r] * (total.log().squeeze(-1) + m.squeeze(-1) * inv_tau_s)).sum()
            if need_grad:  # d/ds_i of A_i logsumexp(s_i / tau_s) = A_i softmax(s_i / tau_s) / tau_s
                g = e.mul_((coef[r] * inv_tau_s)[:, None] / total).to(dtype)
                grad_z[r] += (g @ ws).to(acc)
                _add_product(grad_w, g.T, zs[r], dtype, 1.0)
            del logits, e
        ctx.save_for_backward(grad_z, grad_w)
        ctx.z_dtype, ctx.w_dtype = z_s.dtype, w_s.dtype
        return loss, center_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_center):
        grad_z, grad_w = ctx.saved_tensors  # scaled in place: the graph is used once, and no [K, D] copy is made
        gz = grad_z.mul_(grad_loss).to(ctx.z_dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w.mul_(grad_loss).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return gz, gw, None, None, None, None, None, None, None, None, None, None


def fused_cross_entropy(z_s: torch.Tensor, w_s: torch.Tensor, z_t: torch.Tensor, w_t: torch.Tensor,
                        center: torch.Tensor, student_rows: torch.Tensor, teacher_rows: torch.Tensor,
                        pair_weights: torch.Tensor, student_temp: float, teacher_temp: float,
                        dtype: torch.dtype | None = None, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``sum_p a_p CE(q_{j_p}, s_{i_p})`` and the sum of the teacher's raw logits over its rows (for its centre).

    Args:
        z_s: [N, D] student embeddings (the last layer's input), with gradient.
        w_s: [K, D] student last-layer weight, with gradient.
        z_t, w_t: [M, D] and [K, D], the teacher's (no gradient).
        center: [1, K] the teacher centre subtracted before its softmax.
        student_rows, teacher_rows: [P] long, the rows of each pair; pair_weights: [P] its weight a_p.
        student_temp, teacher_temp: tau_s and tau_t.
        dtype: precision of the K-wide matrix products (default: the embeddings'); bf16 under autocast.
        rows: rows per chunk (default: :func:`default_chunk_rows`).

    Returns:
        (loss [], teacher logit sum [1, K]) in fp32 (fp64 for fp64 inputs).
    """
    dtype = dtype or z_s.dtype
    rows = rows or default_chunk_rows(w_s.shape[0], z_s.device)
    return _FusedCrossEntropy.apply(z_s, w_s, z_t.detach(), w_t.detach(), center.detach(), student_rows, teacher_rows,
                                    pair_weights, 1.0 / student_temp, 1.0 / teacher_temp, dtype, rows)  # fmt: skip
