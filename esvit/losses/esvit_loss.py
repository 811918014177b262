"""The EsViT objective: per pair (1 - w) * L_V + w * L_R averaged over all pairs, with both centres.

``w = region_loss_weight``: 0.5 is the official 0.5/0.5 weighting; 0 is plain DINO (view loss only, and no
region head at all). Centres are updated *after* the loss, from the raw teacher logits of both global
crops, all-reduced across ranks (docs/algorithm.md §1.3-1.4). The teacher temperature is indexed by epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from esvit.losses.chunked import fused_cross_entropy
from esvit.losses.region import match_regions, region_loss
from esvit.losses.view import cross_view_pairs, view_loss
from esvit.models.esvit import GroupOutput

__all__ = ["EsViTLoss", "LossParts", "teacher_temp_schedule"]


def _full(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (or fp64 when given), never in an autocast half type."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Linear warm-up from ``warmup_temp`` to ``temp`` over ``warmup_epochs`` (inclusive), then constant."""
    return np.concatenate(
        (np.linspace(warmup_temp, temp, warmup_epochs), np.ones(max(epochs - warmup_epochs, 0)) * temp)
    )


@dataclass
class LossParts:
    total: torch.Tensor
    view: torch.Tensor
    region: torch.Tensor | None
    # mean entropy (nats) of the teacher's view distribution over up to ENTROPY_ROWS rows: near log K (uniform)
    # or near 0 (one prototype) is how a collapse shows (a diagnostic, no gradient)
    teacher_entropy: torch.Tensor | None = None


ENTROPY_ROWS = 64


@torch.no_grad()
def _entropy(q: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the rows of probabilities ``q``."""
    return torch.special.entr(q.float()).sum(-1).mean()


class EsViTLoss(nn.Module):
    """Args:
    out_dim: K. region_loss_weight: w. epochs and the teacher-temperature schedule. student_temp: tau_s.
    center_momentum: EMA momentum of both centres. chunk_rows: rows per chunk of the fused heads + loss
    (chunked heads only; default :func:`esvit.losses.chunked.default_chunk_rows`).

    Takes either the heads' logits or, from chunked heads (``GroupOutput.last_layers`` set), their last layers'
    inputs and weights; the two give the same loss, gradients and centres up to float rounding.
    """

    def __init__(
        self,
        out_dim: int,
        epochs: int,
        region_loss_weight: float = 0.5,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        n_teacher_crops: int = 2,
        chunk_rows: int | None = None,
    ):
        super().__init__()
        self.chunk_rows = chunk_rows
        self.w = region_loss_weight
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.n_teacher_crops = n_teacher_crops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_grid", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def forward(self, student: list[GroupOutput], teacher: GroupOutput, epoch: int) -> LossParts:
        """Loss over all (teacher crop, student crop != teacher crop) pairs; then updates the centres.

        Always in fp32 (fp64 inputs stay fp64), also when called inside an autocast region: the K-wide products
        and the region matching's similarities would otherwise run in half precision again."""
        device = teacher.view.device.type
        off = (
            torch.autocast(device, enabled=False)
            if device in ("cpu", "cuda", "xpu", "mps")
            else contextlib.nullcontext()
        )
        with off:
            if teacher.last_layers is not None:
                return self._forward_chunked(student, teacher, epoch)
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
                    region_loss(
                        q_region, teacher.features.detach(), _full(group.region), group.features, self.student_temp
                    ).flatten()
                )
            first += group.n_crops
        keep = torch.cat(keep).nonzero().squeeze(1).to(q_view.device)  # built on the CPU: no device sync
        l_view = torch.cat(views).index_select(0, keep).mean()
        if use_region:
            l_region = torch.cat(regions).index_select(0, keep).mean()
            total = (1 - self.w) * l_view + self.w * l_region
        else:
            l_region, total = None, l_view
        sums = [("center", t_view.reshape(-1, t_view.shape[-1]).sum(0, keepdim=True), t_view[..., 0].numel())]
        if use_region:
            sums.append(
                ("center_grid", t_region.reshape(-1, t_region.shape[-1]).sum(0, keepdim=True), t_region[..., 0].numel())
            )
        entropy = _entropy(q_view.reshape(-1, q_view.shape[-1])[:ENTROPY_ROWS])
        self.update_centers(sums)
        return LossParts(total, l_view.detach(), l_region.detach() if l_region is not None else None, entropy)

    def _forward_chunked(self, student: list[GroupOutput], teacher: GroupOutput, epoch: int) -> LossParts:
        """The same loss from the last layers' inputs: every (teacher crop, student crop) pair becomes rows of
        pairs (teacher row, student row, weight) for :func:`fused_cross_entropy`, which never builds [rows, K]."""
        temp = self.teacher_temp(epoch)
        s_last, t_last = student[0].last_layers, teacher.last_layers
        device, n_t, batch = teacher.view.device, teacher.view.shape[0], teacher.view.shape[1]
        firsts = _firsts(student)
        keeps = [cross_view_pairs(n_t, g.n_crops, first) for g, first in zip(student, firsts)]
        n_pairs = sum(int(k.sum()) for k in keeps)  # CPU: no device sync
        use_region = self.w > 0 and teacher.region is not None
        kw = dict(student_temp=self.student_temp, teacher_temp=temp, dtype=s_last.dtype, rows=self.chunk_rows)
        # view: student row (crop s) * B + b against teacher row t * B + b, weight 1 / (pairs * B)
        s_rows, t_rows = [], []
        b = torch.arange(batch)
        for keep, first in zip(keeps, firsts):
            kt, ks = keep.nonzero(as_tuple=True)
            s_rows.append(((first + ks)[:, None] * batch + b).flatten())
            t_rows.append((kt[:, None] * batch + b).flatten())
        s_rows, t_rows = torch.cat(s_rows).to(device), torch.cat(t_rows).to(device)
        z_view = torch.cat([g.view.flatten(0, 1) for g in student])
        acc = torch.promote_types(teacher.view.dtype, torch.float32)
        weights = torch.full(s_rows.shape, 1.0 / (n_pairs * batch), device=device, dtype=acc)
        l_view, view_sum = fused_cross_entropy(
            z_view, s_last.view(), teacher.view.flatten(0, 1), t_last.view(), self.center, s_rows, t_rows, weights, **kw
        )
        sums = [("center", view_sum, teacher.view.shape[0] * batch)]
        l_region = None
        if use_region:
            l_region, region_sum = self._region_chunked(student, teacher, keeps, n_pairs, kw)
            sums.append(("center_grid", region_sum, teacher.region[..., 0].numel()))
            total = (1 - self.w) * l_view + self.w * l_region
        else:
            total = l_view
        with torch.no_grad():  # the teacher's distribution on a few rows, as the logits path has it whole
            rows = teacher.view.flatten(0, 1)[:ENTROPY_ROWS].to(acc)
            logits = rows @ t_last.view().to(acc).T
            entropy = _entropy(F.softmax((logits - self.center.to(acc)) / temp, dim=-1))
        self.update_centers(sums)
        return LossParts(total, l_view.detach(), l_region.detach() if l_region is not None else None, entropy)

    def _region_chunked(self, student, teacher, keeps, n_pairs, kw):
        """Student token i of crop s, image b (row (b n_s + s) T_s + i of its group) against the teacher token
        j* it matches in crop t (row (b n_t + t) T_t + j*); weight 1 / (pairs * B * T_s)."""
        device = teacher.region.device
        batch, n_t, t_t = teacher.region.shape[:3]
        acc = torch.promote_types(teacher.region.dtype, torch.float32)
        s_rows, t_rows, weights, offset = [], [], [], 0
        for group, keep in zip(student, keeps):
            _, n_s, t_s = group.region.shape[:3]
            kt, ks = (k.to(device) for k in keep.nonzero(as_tuple=True))
            idx = match_regions(group.features, teacher.features)  # [n_t, n_s, B, T_s]
            j = idx.flatten(0, 1).index_select(0, kt * n_s + ks)  # [kept, B, T_s]
            b = torch.arange(batch, device=device)[None, :, None]
            i = torch.arange(t_s, device=device)[None, None, :]
            s_rows.append((offset + (b * n_s + ks[:, None, None]) * t_s + i).flatten())
            t_rows.append(((b * n_t + kt[:, None, None]) * t_t + j).flatten())
            weights.append(torch.full((j.numel(),), 1.0 / (n_pairs * batch * t_s), device=device, dtype=acc))
            offset += group.region[..., 0].numel()
        z_region = torch.cat([g.region.flatten(0, 2) for g in student])
        return fused_cross_entropy(
            z_region,
            student[0].last_layers.region(),
            teacher.region.flatten(0, 2),
            teacher.last_layers.region(),
            self.center_grid,
            torch.cat(s_rows),
            torch.cat(t_rows),
            torch.cat(weights),
            **kw,
        )

    @torch.no_grad()
    def update_centers(self, sums: list[tuple[str, torch.Tensor, int]]) -> None:
        """EMA of the mean raw teacher logits (both global crops, every rank), from (centre name, the sum of the
        teacher's logits over its rows [1, K], the number of rows) of this rank."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for name, batch_sum, rows in sums:
            buf = getattr(self, name)
            batch_sum = batch_sum.to(buf.dtype)
            count = torch.tensor(float(rows), device=batch_sum.device, dtype=buf.dtype)
            if world > 1:
                dist.all_reduce(batch_sum)
                dist.all_reduce(count)
            buf.mul_(self.center_momentum).add_(batch_sum / count * (1 - self.center_momentum))


def _firsts(groups: list[GroupOutput]) -> list[int]:
    """Index of each group's first crop in the crop order."""
    out, first = [], 0
    for g in groups:
        out.append(first)
        first += g.n_crops
    return out
