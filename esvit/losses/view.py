"""View-level loss L_V (DINO, docs/algorithm.md §1.3): cross-entropy between the centred, sharpened teacher
distribution of each global crop and the student distribution of every other crop.

Computed as ``CE(q, log_softmax(s / tau)) = logsumexp(s / tau) - (q . s) / tau`` (the teacher rows sum to
one): the same value without materialising the student's [.., K] log-probabilities, and the q . s products
of all pairs are one batched matrix product.
"""

from __future__ import annotations

import torch

from esvit.losses.lse import scaled_logsumexp

__all__ = ["view_loss", "cross_view_pairs"]


def view_loss(teacher_probs: torch.Tensor, student_view: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-pair view losses for one group of same-size student crops, all pairs at once.

    Args:
        teacher_probs: [n_t, B, K] teacher softmax((o_t - c) / tau_t), detached.
        student_view: [n_s, B, K] student view logits of this group.
        student_temp: tau_s.

    Returns:
        [n_t, n_s] loss of each (teacher crop, student crop) pair, mean over the batch, same-view pairs included
        (the caller drops them by position with ``cross_view_pairs``).
    """
    inv = 1.0 / student_temp
    lse = scaled_logsumexp(student_view, inv)  # [n_s, B]
    dots = torch.einsum("tbk,sbk->tsb", teacher_probs, student_view)  # [n_t, n_s, B]
    return (lse.unsqueeze(0) - inv * dots).mean(-1)


def cross_view_pairs(n_t: int, n_s: int, first_crop: int) -> torch.Tensor:
    """[n_t, n_s] bool, False where teacher crop t and student crop ``first_crop + s`` are the same view.

    Same-view pairs are dropped by *position*, never by value: a NaN or inf in any pair's loss must reach the
    total, so the non-finite-loss guard stops the step (as the official loss does).
    """
    t = torch.arange(n_t)[:, None]
    s = torch.arange(n_s)[None, :] + first_crop
    return t != s
