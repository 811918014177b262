"""The EsViT objective: per pair (1 - w) * L_V + w * L_R averaged over all pairs, with both centres.

``w = region_loss_weight``: 0.5 is the official 0.5/0.5 weighting; 0 is plain DINO (view loss only, and no
region head at all). Centres are updated *after* the loss, from the raw teacher logits of both global
crops, all-reduced across ranks (reference §1.3-1.4). The teacher temperature is indexed by epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from esvit.losses.region import region_loss
from esvit.losses.view import cross_view_pairs, view_loss
from esvit.models.esvit import GroupOutput

__all__ = ["EsViTLoss", "LossParts", "teacher_temp_schedule"]


def _full(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (or fp64 when given), never in an autocast half type."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Linear warm-up from ``warmup_temp`` to ``temp`` over ``warmup_epochs`` (inclusive), then constant."""
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.ones(max(epochs - warmup_epochs, 0)) * temp))


@dataclass
class LossParts:
    total: torch.Tensor
    view: torch.Tensor
    region: torch.Tensor | None


class EsViTLoss(nn.Module):
    """Args:
    out_dim: K. region_loss_weight: w. epochs and the teacher-temperature schedule. student_temp: tau_s.
    center_momentum: EMA momentum of both centres.
    """

    def __init__(self, out_dim: int, epochs: int, region_loss_weight: float = 0.5, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 30,
                 center_momentum: float = 0.9, n_teacher_crops: int = 2):  # fmt: skip
        super().__init__()
        self.w = region_loss_weight
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.n_teacher_crops = n_teacher_crops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_grid", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs)

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def forward(self, student: list[GroupOutput], teacher: GroupOutput, epoch: int) -> LossParts:
        """Loss over all (teacher crop, student crop != teacher crop) pairs; then updates the centres.

        Always in fp32 (fp64 inputs stay fp64), also when called inside an autocast region: the K-wide products
        and the region matching's similarities would otherwise run in half precision again."""
        device = teacher.view.device.type
        off = torch.autocast(device, enabled=False) if device in ("cpu", "cuda", "xpu", "mps") else contextlib.nullcontext()
        with off:
            return self._forward(student, teacher, epoch)

    def _forward(self, student: list[GroupOutput], teacher: GroupOutput, epoch: int) -> LossParts:
        temp = self.teacher_temp(epoch)
        t_view = _full(teacher.view)
        q_view = F.softmax(torch.sub(t_view.detach(), self.center).mul_(1.0 / temp), dim=-1)
        use_region = self.w > 0 and teacher.region is not None
        if use_region:
            t_region = _full(teacher.region)
            q_region = F.softmax(torch.sub(t_region.detach(), self.center_grid).mul_(1.0 / temp), dim=-1)
        views, regions, keep, first = [], [], [], 0
        for group in student:
            keep.append(cross_view_pairs(q_view.shape[0], group.n_crops, first).flatten())
            views.append(view_loss(q_view, _full(group.view), self.student_temp).flatten())
            if use_region:
                regions.append(
                    region_loss(q_region, teacher.features.detach(), _full(group.region), group.features,
                                self.student_temp).flatten()  # fmt: skip
                )
            first += group.n_crops
        keep = torch.cat(keep).nonzero().squeeze(1).to(q_view.device)  # built on the CPU: no device sync
        l_view = torch.cat(views).index_select(0, keep).mean()
        if use_region:
            l_region = torch.cat(regions).index_select(0, keep).mean()
            total = (1 - self.w) * l_view + self.w * l_region
        else:
            l_region, total = None, l_view
        self.update_centers(t_view, t_region if use_region else None)
        return LossParts(total, l_view.detach(), l_region.detach() if l_region is not None else None)

    @torch.no_grad()
    def update_centers(self, teacher_view: torch.Tensor, teacher_region: torch.Tensor | None) -> None:
        """EMA of the mean raw teacher logits (both global crops, every rank)."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for name, out in (("center", teacher_view), ("center_grid", teacher_region)):
            if out is None:
                continue
            flat = out.reshape(-1, out.shape[-1])
            batch_sum = flat.sum(0, keepdim=True)
            count = torch.tensor(float(flat.shape[0]), device=flat.device)
            if world > 1:
                dist.all_reduce(batch_sum)
                dist.all_reduce(count)
            buf = getattr(self, name)
            buf.mul_(self.center_momentum).add_(batch_sum / count * (1 - self.center_momentum))
