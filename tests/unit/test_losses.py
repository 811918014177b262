"""The EsViT loss against a deliberately naive implementation (loops over pairs, images and tokens)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from esvit.losses import EsViTLoss, match_regions
from esvit.models.esvit import GroupOutput

K, B, C = 24, 3, 8


def naive_loss(student_crops, teacher_crops, center, center_grid, t_temp, s_temp, w):
    """student_crops: list of (view [B, K], region [B, T, K], feats [B, T, C]) in crop order;
    teacher_crops: the same for the 2 global crops. Straight from the paper's definitions."""
    total, n_pairs = 0.0, 0
    for t, (tv, tr, tf) in enumerate(teacher_crops):
        for s, (sv, sr, sf) in enumerate(student_crops):
            if s == t:
                continue
            pair_view, pair_region = 0.0, 0.0
            for b in range(B):
                q = torch.softmax((tv[b] - center[0]) / t_temp, dim=-1)
                logp = torch.log_softmax(sv[b] / s_temp, dim=-1)
                pair_view += -(q * logp).sum() / B
                token_losses = []
                for i in range(sf.shape[1]):
                    sims = [F.cosine_similarity(sf[b, i], tf[b, j], dim=0) for j in range(tf.shape[1])]
                    j_star = max(range(len(sims)), key=lambda j: sims[j])
                    q_r = torch.softmax((tr[b, j_star] - center_grid[0]) / t_temp, dim=-1)
                    logp_r = torch.log_softmax(sr[b, i] / s_temp, dim=-1)
                    token_losses.append(-(q_r * logp_r).sum())
                pair_region += sum(token_losses) / len(token_losses) / B
            total += (1 - w) * pair_view + w * pair_region if w > 0 else pair_view
            n_pairs += 1
    return total / n_pairs


def random_outputs(sizes: list[tuple[int, int]], gen: torch.Generator):
    """Groups of (n crops, tokens per crop) -> GroupOutputs (float64) and the per-crop view of the same data."""
    groups, crops = [], []
    for n, t in sizes:
        v = torch.randn(n, B, K, generator=gen, dtype=torch.float64) * 3
        r = torch.randn(n, B, t, K, generator=gen, dtype=torch.float64) * 3
        f = torch.randn(n, B, t, C, generator=gen, dtype=torch.float64)
        groups.append(GroupOutput(v, r.transpose(0, 1).contiguous(), f.transpose(0, 1).contiguous()))
        crops += [(v[i], r[i], f[i]) for i in range(n)]
    return groups, crops


@pytest.mark.parametrize("w", [0.5, 0.3, 0.0])
def test_loss_matches_naive_implementation_with_two_local_sizes(w):
    gen = torch.Generator().manual_seed(0)
    # 2 global crops of 4 tokens, 3 local crops of 2 tokens, 2 local crops of 1 token
    student, s_crops = random_outputs([(2, 4), (3, 2), (2, 1)], gen)
    teacher, t_crops = random_outputs([(2, 4)], gen)
    loss = EsViTLoss(K, epochs=10, region_loss_weight=w, warmup_teacher_temp_epochs=4).double()
    loss.center.normal_(generator=gen)
    loss.center_grid.normal_(generator=gen)
    center, center_grid = loss.center.clone(), loss.center_grid.clone()
    epoch = 2
    parts = loss(student, teacher[0], epoch)
    t_temp = 0.04 + (0.07 - 0.04) * epoch / 3
    expected = naive_loss(s_crops, t_crops, center, center_grid, t_temp, 0.1, w)
    assert abs(parts.total.item() - expected.item()) < 1e-6


@pytest.mark.parametrize("where", ["local view", "local region", "global view", "global region"])
def test_a_non_finite_logit_in_any_crop_makes_the_loss_non_finite(where):
    """Same-view pairs are dropped by position: a NaN in any crop's logits reaches the total (the official loss
    is NaN there too), so the training step's finiteness guard fires instead of training on a finite number."""
    gen = torch.Generator().manual_seed(5)
    student, s_crops = random_outputs([(2, 4), (3, 2)], gen)
    teacher, t_crops = random_outputs([(2, 4)], gen)
    group = student[1] if where.startswith("local") else student[0]
    crop = 4 if where.startswith("local") else 1  # the group's last crop
    if where.endswith("view"):
        group.view[-1, 0, 3] = float("nan")  # shares storage with s_crops
    else:
        group.region[0, -1, 1, 3] = s_crops[crop][1][0, 1, 3] = float("nan")
    loss = EsViTLoss(K, epochs=3).double()
    zeros = torch.zeros(1, K, dtype=torch.float64)
    assert torch.isnan(loss(student, teacher[0], 0).total)
    assert math.isnan(naive_loss(s_crops, t_crops, zeros, zeros, 0.04, 0.1, 0.5).item())  # the definition agrees


def test_centers_move_by_the_formula_after_the_loss():
    gen = torch.Generator().manual_seed(1)
    student, _ = random_outputs([(2, 4), (4, 1)], gen)
    teacher, _ = random_outputs([(2, 4)], gen)
    loss = EsViTLoss(K, epochs=3, region_loss_weight=0.5, center_momentum=0.9).double()
    loss.center.fill_(0.5)
    loss(student, teacher[0], 0)
    expected = 0.9 * 0.5 + 0.1 * teacher[0].view.reshape(-1, K).mean(0, keepdim=True)
    expected_grid = 0.9 * 0.0 + 0.1 * teacher[0].region.reshape(-1, K).mean(0, keepdim=True)  # all tokens
    torch.testing.assert_close(loss.center, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss.center_grid, expected_grid, rtol=0, atol=1e-12)


def test_centering_uses_the_center_from_before_the_update():
    """The loss of a call uses the old centre: two calls with the same inputs differ by exactly that update."""
    gen = torch.Generator().manual_seed(2)
    student, s_crops = random_outputs([(2, 3), (2, 1)], gen)
    teacher, t_crops = random_outputs([(2, 3)], gen)
    loss = EsViTLoss(K, epochs=3).double()
    first = loss(student, teacher[0], 0).total.item()
    zeros = torch.zeros(1, K, dtype=torch.float64)
    assert abs(first - naive_loss(s_crops, t_crops, zeros, zeros, 0.04, 0.1, 0.5).item()) < 1e-9


def test_matching_recovers_a_permutation():
    gen = torch.Generator().manual_seed(3)
    n_s, T = 3, 16
    student = torch.randn(n_s, B, T, 32, generator=gen)
    perms = torch.stack([torch.randperm(T, generator=gen) for _ in range(2 * B)]).view(2, B, T)
    # teacher token j of crop t, image b is student token perms[t, b, j] of student crop 0, scaled
    teacher = torch.stack([torch.stack([student[0, b, perms[t, b]] * (1 + t) for b in range(B)]) for t in range(2)])
    idx = match_regions(student[:1].transpose(0, 1), teacher.transpose(0, 1))  # [2, 1, B, T]
    for t in range(2):
        for b in range(B):
            inverse = torch.argsort(perms[t, b])
            assert torch.equal(idx[t, 0, b], inverse)


def test_teacher_temperature_schedule_is_per_epoch():
    loss = EsViTLoss(K, epochs=50, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30)
    assert loss.teacher_temp(0) == pytest.approx(0.04)
    assert loss.teacher_temp(29) == pytest.approx(0.07)
    assert loss.teacher_temp(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert loss.teacher_temp(49) == pytest.approx(0.07)


def test_view_only_loss_has_no_region_term_and_equals_dino():
    gen = torch.Generator().manual_seed(4)
    student, s_crops = random_outputs([(2, 2), (3, 1)], gen)
    teacher, t_crops = random_outputs([(2, 2)], gen)
    student = [GroupOutput(g.view, None, None) for g in student]
    loss = EsViTLoss(K, epochs=3, region_loss_weight=0.0).double()
    parts = loss(student, GroupOutput(teacher[0].view, None, None), 0)
    zeros = torch.zeros(1, K, dtype=torch.float64)
    assert parts.region is None
    assert math.isclose(parts.total.item(), naive_loss(s_crops, t_crops, zeros, zeros, 0.04, 0.1, 0.0).item(), abs_tol=1e-9)


def test_fused_scaled_logsumexp_matches_autograd():
    from esvit.losses.lse import scaled_logsumexp

    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 5, 40, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    y = scaled_logsumexp(x, 10.0)
    ref = torch.logsumexp(x * 10.0, dim=-1)
    torch.testing.assert_close(y, ref)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g, g_ref)
    assert torch.autograd.gradcheck(lambda t: scaled_logsumexp(t, 3.0), (x[:1, :2, :6].detach().requires_grad_(),))


def test_the_loss_is_fp32_inside_an_autocast_region_too():
    """Called inside bf16 autocast (as a training step's forward is), the loss and the region matching still
    run in fp32: the value and the centres are bit-identical to the same call outside autocast."""
    gen = torch.Generator().manual_seed(7)
    student, _ = random_outputs([(2, 4), (3, 2)], gen)
    teacher, _ = random_outputs([(2, 4)], gen)
    student = [GroupOutput(g.view.float(), g.region.float(), g.features.float()) for g in student]
    teacher = GroupOutput(teacher[0].view.float(), teacher[0].region.float(), teacher[0].features.float())
    outside, inside = EsViTLoss(K, epochs=3), EsViTLoss(K, epochs=3)
    a = outside(student, teacher, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = inside(student, teacher, 0)
    assert b.total.dtype == torch.float32
    assert torch.equal(a.total, b.total) and torch.equal(a.region, b.region)
    assert torch.equal(outside.center, inside.center) and torch.equal(outside.center_grid, inside.center_grid)


def test_the_loss_never_reads_a_device_tensor_on_the_host():
    """Run on the meta device, where a host read (a boolean mask, nonzero, item) raises: the loss, the region
    matching and the centre updates queue device work only (the same-view pairs are dropped by an index list
    built on the CPU)."""
    gen = torch.Generator().manual_seed(8)
    student, _ = random_outputs([(2, 4), (3, 2)], gen)
    teacher, _ = random_outputs([(2, 4)], gen)
    meta = lambda g: GroupOutput(g.view.to("meta"), g.region.to("meta"), g.features.to("meta"))  # noqa: E731
    loss = EsViTLoss(K, epochs=3).double().to("meta")
    parts = loss([meta(g) for g in student], meta(teacher[0]), 0)
    assert parts.total.device.type == "meta" and parts.region.shape == ()
