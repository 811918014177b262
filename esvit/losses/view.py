"""View-level loss L_V (DINO, reference §1.3): cross-entropy between the centred, sharpened teacher
distribution of each global crop and the student distribution of every other crop.

Computed as ``CE(q, log_softmax(s / tau)) = logsumexp(s / tau) - (q . s) / tau`` (the teacher rows sum to
one): the same value without materialising the student's [.., K] log-probabilities, and the q . s products
of all pairs are one batched matrix product.
"""

from __future__ import annotations

import torch

from esvit.losses.lse import scaled_logsumexp

__all__ = ["view_loss"]


def view_loss(teacher_probs: torch.Tensor, student_view: torch.Tensor, student_temp: float, first_crop: int) -> torch.Tensor:
    """Per-pair view losses for one group of same-size student crops, all pairs at once.

    Args:
        teacher_probs: [n_t, B, K] teacher softmax((o_t - c) / tau_t), detached.
        student_view: [n_s, B, K] student view logits of this group.
        student_temp: tau_s.
        first_crop: global index of this group's first crop (teacher crops are 0..n_t-1).

    Returns:
        [n_t, n_s] loss of each (teacher crop, student crop) pair, mean over the batch; same-view pairs are NaN
        (the caller skips them).
    """
    inv = 1.0 / student_temp
    lse = scaled_logsumexp(student_view, inv)  # [n_s, B]
    dots = torch.einsum("tbk,sbk->tsb", teacher_probs, student_view)  # [n_t, n_s, B]
    loss = (lse.unsqueeze(0) - inv * dots).mean(-1)
    return _mask_same_view(loss, first_crop)


def _mask_same_view(loss: torch.Tensor, first_crop: int) -> torch.Tensor:
    n_t, n_s = loss.shape
    t = torch.arange(n_t, device=loss.device)[:, None]
    s = torch.arange(n_s, device=loss.device)[None, :] + first_crop
    return loss.masked_fill(t == s, float("nan"))
