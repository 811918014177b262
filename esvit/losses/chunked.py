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
stay fp64). Under fp16 the gradient products run in fp32: formed before any loss scaling, they would
underflow in fp16.

Memory: per chunk one [rows, K] block in the accumulation type (plus its copy in ``dtype`` under autocast),
and from the loss to the backward pass the last layers' gradients, [K, D] in fp32 for each head. Below a few
hundred token rows per step those two [K, D] blocks outweigh the logits they replace.
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


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """``out += alpha * a @ b``, the product in the operands' precision (in place when that is ``out``'s)."""
    if a.dtype == out.dtype:
        torch.addmm(out, a, b, alpha=alpha, out=out)  # (not addmm_: torch's FLOP counter misses in-place products)
    else:
        out.add_(a @ b, alpha=alpha)


def _chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        z_s,
        w_s,
        z_t,
        w_t,
        center,
        student_rows,
        teacher_rows,
        pair_weights,
        inv_tau_s,
        inv_tau_t,
        dtype,
        rows,
        grads,
    ):
        acc = torch.promote_types(z_s.dtype, torch.float32)  # fp32, or fp64 when given
        # the gradient products: in fp16 they would underflow (a softmax row / tau_s times a pair weight is far
        # below fp16's range, and no loss scale has been applied yet), so they run in fp32 there
        gdtype = acc if dtype == torch.float16 else dtype
        grad_z_needed = grads and ctx.needs_input_grad[0]
        grad_w_needed = grads and ctx.needs_input_grad[1]
        n, k, d = z_s.shape[0], w_s.shape[0], w_s.shape[1]
        dev = z_s.device
        ws, wt, wg = w_s.to(dtype), w_t.to(dtype), w_s.to(gdtype)
        zs, zt, zg = z_s.to(dtype), z_t.to(dtype), z_s.to(gdtype)
        a = pair_weights.to(acc)
        # per student row: the summed weights of its pairs (the logsumexp coefficient)
        coef = torch.zeros(n, dtype=acc, device=dev).index_add_(0, student_rows, a)
        grad_w = torch.zeros(k, d, dtype=acc, device=dev) if grad_w_needed else None
        if grad_w_needed:  # sum_{p: j_p = j} a_p z_i / tau_s per teacher row: the teacher side of dL/dW is -Q^T Z~
            z_tilde = torch.zeros(z_t.shape[0], d, dtype=acc, device=dev)
            z_tilde.index_add_(0, teacher_rows, z_s.to(acc).index_select(0, student_rows) * (a * inv_tau_s)[:, None])
            z_tilde = z_tilde.to(gdtype)
        proj = torch.empty(z_t.shape[0], d, dtype=acc, device=dev)  # P = Q W
        center_sum = torch.zeros(1, k, dtype=acc, device=dev)
        center = center.to(acc)
        for r in _chunks(z_t.shape[0], rows):
            q = (zt[r] @ wt.T).to(acc)  # the teacher's logits, turned into its probabilities in place
            center_sum += q.sum(0, keepdim=True)
            q.sub_(center).mul_(inv_tau_t)
            q.sub_(q.amax(dim=-1, keepdim=True)).exp_()
            q.div_(q.sum(dim=-1, keepdim=True))
            qd = q.to(dtype)
            proj[r] = qd @ ws
            if grad_w_needed:
                _add_product(grad_w, (qd if gdtype == dtype else q.to(gdtype)).T, z_tilde[r], -1.0)
            del q, qd
        matched = (proj.index_select(0, teacher_rows) * z_s.to(acc).index_select(0, student_rows)).sum(-1)
        loss = -(a * matched).sum() * inv_tau_s
        grad_z = None
        if grad_z_needed:
            grad_z = torch.zeros(n, d, dtype=acc, device=dev)
            grad_z.index_add_(0, student_rows, proj.index_select(0, teacher_rows) * (-a * inv_tau_s)[:, None])
        del proj
        for r in _chunks(n, rows):
            e = (zs[r] @ ws.T).to(acc)  # the student's logits, turned into exp((s - max) / tau_s) in place
            m = e.amax(dim=-1, keepdim=True)
            e.sub_(m).mul_(inv_tau_s).exp_()
            total = e.sum(dim=-1, keepdim=True)
            loss = loss + (coef[r] * (total.log().squeeze(-1) + m.squeeze(-1) * inv_tau_s)).sum()
            if (
                grad_z_needed or grad_w_needed
            ):  # d/ds_i of A_i logsumexp(s_i / tau_s) = A_i softmax(s_i / tau_s) / tau_s
                g = e.mul_((coef[r] * inv_tau_s)[:, None] / total).to(gdtype)
                if grad_z_needed:
                    grad_z[r] += g @ wg
                if grad_w_needed:
                    _add_product(grad_w, g.T, zg[r], 1.0)
                del g
            del e
        ctx.save_for_backward(grad_z, grad_w)
        ctx.mark_non_differentiable(center_sum)
        ctx.z_dtype, ctx.w_dtype = z_s.dtype, w_s.dtype
        return loss, center_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_center):
        grad_z, grad_w = ctx.saved_tensors  # not scaled in place: a retained graph can be differentiated again
        gz = (grad_z * grad_loss).to(ctx.z_dtype) if grad_z is not None and ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_loss).to(ctx.w_dtype) if grad_w is not None and ctx.needs_input_grad[1] else None
        return gz, gw, None, None, None, None, None, None, None, None, None, None, None


def fused_cross_entropy(
    z_s: torch.Tensor,
    w_s: torch.Tensor,
    z_t: torch.Tensor,
    w_t: torch.Tensor,
    center: torch.Tensor,
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    pair_weights: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    dtype: torch.dtype | None = None,
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
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
    grads = torch.is_grad_enabled() and (z_s.requires_grad or w_s.requires_grad)  # none formed under no_grad
    return _FusedCrossEntropy.apply(
        z_s,
        w_s,
        z_t.detach(),
        w_t.detach(),
        center.detach(),
        student_rows,
        teacher_rows,
        pair_weights,
        1.0 / student_temp,
        1.0 / teacher_temp,
        dtype,
        rows,
        grads,
    )
