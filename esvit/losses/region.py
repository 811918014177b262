"""Region-level loss L_R (EsViT, docs/algorithm.md §1.4).

For each pair (teacher global crop t, student crop s): every student token i takes the teacher token
j* = argmax_j cos(z_s,i, z_t,j) of highest cosine similarity between *backbone* features (hard, no
gradient); the loss is the cross-entropy between the teacher's region distribution at j* (separate centre,
same tau_t) and the student's region distribution at i, averaged over tokens, then over the batch.
Direction is student -> teacher only.

As for the view loss, ``CE = logsumexp(s_i / tau) - (q_j* . s_i) / tau``; the products of every student token
with every teacher token of the pair come from one batched matrix product, from which the matched ones are
taken. Nothing of size [pairs, B, T, K] is materialised (the gather of teacher rows would be).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esvit.losses.lse import scaled_logsumexp

__all__ = ["region_loss", "match_regions"]


@torch.no_grad()
def match_regions(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Index of the best teacher token for every student token, for all pairs.

    Args:
        student_features: [B, n_s, T_s, C] backbone tokens of one group of student crops.
        teacher_features: [B, n_t, T_t, C] backbone tokens of the teacher's global crops.

    Returns:
        [n_t, n_s, B, T_s] long: argmax over teacher tokens of the cosine similarity.
    """
    dtype = torch.promote_types(student_features.dtype, torch.float32)
    s = F.normalize(student_features.to(dtype), dim=-1)
    t = F.normalize(teacher_features.to(dtype), dim=-1)
    return torch.einsum("bsic,btjc->tsbij", s, t).argmax(-1)


def region_loss(
    teacher_probs: torch.Tensor,
    teacher_features: torch.Tensor,
    student_region: torch.Tensor,
    student_features: torch.Tensor,
    student_temp: float,
) -> torch.Tensor:
    """Per-pair region losses for one group of same-size student crops (all tensors batch-major).

    Args:
        teacher_probs: [B, n_t, T_t, K] teacher region softmax((o - c_grid) / tau_t), detached.
        teacher_features: [B, n_t, T_t, C] teacher backbone tokens.
        student_region: [B, n_s, T_s, K] student region logits (head_dense outputs).
        student_features: [B, n_s, T_s, C] student backbone tokens (only used for matching).
        student_temp: tau_s.

    Returns:
        [n_t, n_s] loss per pair, same-view pairs included (dropped by the caller, by position).
    """
    batch, n_s, t_s, k = student_region.shape
    n_t, t_t = teacher_probs.shape[1:3]
    idx = match_regions(student_features, teacher_features)  # [n_t, n_s, B, T_s]
    inv = 1.0 / student_temp
    lse = scaled_logsumexp(student_region, inv)  # [B, n_s, T_s]
    dots = torch.bmm(
        student_region.reshape(batch, n_s * t_s, k), teacher_probs.reshape(batch, n_t * t_t, k).transpose(1, 2)
    )
    dots = dots.view(batch, n_s, t_s, n_t, t_t).permute(3, 1, 0, 2, 4)  # [n_t, n_s, B, T_s, T_t]
    matched = dots.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # [n_t, n_s, B, T_s]
    return (lse.permute(1, 0, 2).unsqueeze(0) - inv * matched).mean(dim=(-1, -2))
