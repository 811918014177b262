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
    assert math.isclose(
        parts.total.item(), naive_loss(s_crops, t_crops, zeros, zeros, 0.04, 0.1, 0.0).item(), abs_tol=1e-9
    )


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


# -- chunked heads: the last layers applied inside the loss, a chunk of rows at a time ----------------------------


def _naive_fused(z_s, w_s, z_t, w_t, center, s_rows, t_rows, weights, s_temp, t_temp):
    """Straight autograd: every logit materialised."""
    q = torch.softmax((z_t @ w_t.T - center) / t_temp, dim=-1)
    logp = torch.log_softmax(z_s @ w_s.T / s_temp, dim=-1)
    return (weights * -(q[t_rows] * logp[s_rows]).sum(-1)).sum(), (z_t @ w_t.T).sum(0, keepdim=True)


@pytest.mark.parametrize("rows", [1, 4, 1000])
def test_fused_cross_entropy_matches_autograd_for_any_chunking(rows):
    from esvit.losses.chunked import fused_cross_entropy

    gen = torch.Generator().manual_seed(11)
    n, m, d, k, p = 13, 7, 5, 40, 30
    z_s = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    w_s = torch.randn(k, d, generator=gen, dtype=torch.float64, requires_grad=True)
    z_t, w_t = (
        torch.randn(m, d, generator=gen, dtype=torch.float64),
        torch.randn(k, d, generator=gen, dtype=torch.float64),
    )
    center = torch.randn(1, k, generator=gen, dtype=torch.float64)
    s_rows, t_rows = torch.randint(0, n, (p,), generator=gen), torch.randint(0, m, (p,), generator=gen)
    weights = torch.rand(p, generator=gen, dtype=torch.float64)
    loss, t_sum = fused_cross_entropy(z_s, w_s, z_t, w_t, center, s_rows, t_rows, weights, 0.1, 0.04, rows=rows)
    grads = torch.autograd.grad(loss * 3.0, (z_s, w_s))  # a scaled upstream gradient reaches both
    ref, ref_sum = _naive_fused(z_s, w_s, z_t, w_t, center, s_rows, t_rows, weights, 0.1, 0.04)
    ref_grads = torch.autograd.grad(ref * 3.0, (z_s, w_s))
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(t_sum, ref_sum, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def _as_logits(groups, weights):
    """GroupOutputs of embeddings + their last layers -> the same outputs as logits (what unchunked heads give)."""
    view_w, region_w = weights
    return [
        GroupOutput(g.view @ view_w.T, g.region @ region_w.T if g.region is not None else None, g.features)
        for g in groups
    ]


def _embedded_outputs(sizes, gen, d, k, dtype=torch.float64):
    """Groups of embeddings (unit rows, as the heads give them) sharing last-layer weights that require grad."""
    from esvit.models.esvit import LastLayers

    view_w = torch.randn(k, d, generator=gen, dtype=dtype).requires_grad_()
    region_w = torch.randn(k, d, generator=gen, dtype=dtype).requires_grad_()
    groups = []
    for n, t in sizes:
        v = F.normalize(torch.randn(n, B, d, generator=gen, dtype=dtype), dim=-1).requires_grad_()
        r = F.normalize(torch.randn(B, n, t, d, generator=gen, dtype=dtype), dim=-1).requires_grad_()
        f = torch.randn(B, n, t, C, generator=gen, dtype=dtype)
        groups.append(GroupOutput(v, r, f, LastLayers(lambda: view_w, lambda: region_w, dtype)))
    return groups, (view_w, region_w)


@pytest.mark.parametrize("w", [0.5, 0.0])
def test_chunked_heads_give_the_loss_gradients_and_centres_of_the_logits(w):
    """The loss from embeddings + last layers (chunked, 3 rows at a time) against the loss from the logits those
    produce: value, gradients (embeddings and weights) and both centres, two local sizes."""
    gen = torch.Generator().manual_seed(12)
    d = 6
    student, s_weights = _embedded_outputs([(2, 4), (3, 2), (2, 1)], gen, d, K)
    teacher, t_weights = _embedded_outputs([(2, 4)], gen, d, K)
    teacher = [GroupOutput(g.view.detach(), g.region.detach(), g.features, g.last_layers) for g in teacher]
    chunked = EsViTLoss(K, epochs=3, region_loss_weight=w, chunk_rows=3).double()
    plain = EsViTLoss(K, epochs=3, region_loss_weight=w).double()
    for loss in (chunked, plain):
        loss.center.normal_(generator=torch.Generator().manual_seed(1))
        loss.center_grid.normal_(generator=torch.Generator().manual_seed(2))
    leaves = [g.view for g in student] + [g.region for g in student] + list(s_weights)
    a = chunked(student, teacher[0], 1)
    ga = torch.autograd.grad(a.total, leaves, allow_unused=True)
    with torch.no_grad():
        t_logits = _as_logits(teacher, t_weights)[0]
    b = plain(_as_logits(student, s_weights), t_logits if w > 0 else GroupOutput(t_logits.view, None, None), 1)
    gb = torch.autograd.grad(b.total, leaves, allow_unused=True)
    torch.testing.assert_close(a.total, b.total, rtol=1e-12, atol=0)
    assert (a.region is None) == (b.region is None) == (w == 0)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(chunked.center, plain.center, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.center_grid, plain.center_grid, rtol=1e-12, atol=1e-12)


def test_chunked_heads_at_the_papers_65536_prototypes_match_the_logits_path():
    """K = 65,536 in fp32 with the default chunking: the same loss, gradients and centres to float rounding."""
    gen = torch.Generator().manual_seed(13)
    k, d = 65536, 32
    student, s_weights = _embedded_outputs([(2, 9), (4, 4)], gen, d, k, torch.float32)
    teacher, t_weights = _embedded_outputs([(2, 9)], gen, d, k, torch.float32)
    with torch.no_grad():
        for w in (*s_weights, *t_weights):
            w.mul_(3.0)  # logits of a trained head's range
    teacher = GroupOutput(
        teacher[0].view.detach(), teacher[0].region.detach(), teacher[0].features, teacher[0].last_layers
    )
    chunked, plain = EsViTLoss(k, epochs=3), EsViTLoss(k, epochs=3)
    leaves = [g.view for g in student] + [g.region for g in student] + list(s_weights)
    a = chunked(student, teacher, 0)
    ga = torch.autograd.grad(a.total, leaves)
    with torch.no_grad():
        t_logits = _as_logits([teacher], t_weights)[0]
    b = plain(_as_logits(student, s_weights), t_logits, 0)
    gb = torch.autograd.grad(b.total, leaves)
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.region, b.region, rtol=1e-5, atol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
    torch.testing.assert_close(chunked.center, plain.center, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.center_grid, plain.center_grid, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["local view", "global region"])
def test_a_non_finite_embedding_makes_the_chunked_loss_non_finite(where):
    gen = torch.Generator().manual_seed(14)
    student, _ = _embedded_outputs([(2, 4), (3, 2)], gen, 6, K)
    teacher, _ = _embedded_outputs([(2, 4)], gen, 6, K)
    with torch.no_grad():
        if where == "local view":
            student[1].view[-1, 0, 3] = float("nan")
        else:
            student[0].region[0, -1, 1, 3] = float("nan")
    assert torch.isnan(EsViTLoss(K, epochs=3).double()(student, teacher[0], 0).total)


def test_the_chunked_loss_never_reads_a_device_tensor_on_the_host():
    gen = torch.Generator().manual_seed(15)
    student, _ = _embedded_outputs([(2, 4), (3, 2)], gen, 6, K)
    teacher, _ = _embedded_outputs([(2, 4)], gen, 6, K)
    from esvit.models.esvit import LastLayers

    def meta(g):
        view_w, region_w = g.last_layers.view().detach().to("meta"), g.last_layers.region().detach().to("meta")
        last = LastLayers(lambda: view_w, lambda: region_w, torch.float64)
        return GroupOutput(g.view.detach().to("meta"), g.region.detach().to("meta"), g.features.to("meta"), last)

    loss = EsViTLoss(K, epochs=3, chunk_rows=5).double().to("meta")
    parts = loss([meta(g) for g in student], meta(teacher[0]), 0)
    assert parts.total.device.type == "meta" and parts.region.shape == ()


def test_the_flop_counter_sees_every_product_of_the_fused_loss():
    """`esvit bench train` reports FLOP/s from torch's FLOP counter: each of the six K-wide products (teacher
    logits, W^T q, the teacher part of dL/dW; student logits, dL/dz, dL/dW) must be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from esvit.losses.chunked import fused_cross_entropy

    n, m, d, k = 10, 6, 8, 64
    z_s, w_s = torch.randn(n, d, requires_grad=True), torch.randn(k, d, requires_grad=True)
    rows = torch.arange(n) % m
    with FlopCounterMode(display=False) as counter:
        loss, _ = fused_cross_entropy(
            z_s,
            w_s,
            torch.randn(m, d),
            torch.randn(k, d),
            torch.zeros(1, k),
            torch.arange(n),
            rows,
            torch.ones(n),
            0.1,
            0.04,
            rows=4,
        )
        loss.backward()
    assert counter.get_total_flops() == 2 * k * d * 3 * (n + m)


def _half_precision_case():
    """The paper's sizes where precision bites: K = 65,536, D = 256, a region pair weight of a batch of 32
    (1 / (18 pairs x 32 images x 49 tokens)), weight_g = 1 as at initialisation; float64 data."""
    gen = torch.Generator().manual_seed(16)
    k, d, n, m = 65536, 256, 16, 8
    w = F.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=-1)
    z_s = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    z_t = F.normalize(torch.randn(m, d, generator=gen, dtype=torch.float64), dim=-1)
    weights = torch.full((n,), 1.0 / (18 * 32 * 49), dtype=torch.float64)
    return w, z_s, z_t, torch.arange(n), torch.arange(n) % m, weights


def _fused_grads(case, dtype, product_dtype, scale=65536.0):
    """Loss and gradients of the fused loss on ``case`` in ``dtype`` data with products in ``product_dtype``,
    backpropagated from ``scale * loss`` (a GradScaler's initial scale) and unscaled, as float64."""
    from esvit.losses.chunked import fused_cross_entropy

    w, z_s, z_t, s_rows, t_rows, weights = case
    z = z_s.to(dtype).detach().clone().requires_grad_()
    ws = w.to(dtype).detach().clone().requires_grad_()
    loss, _ = fused_cross_entropy(
        z,
        ws,
        z_t.to(dtype),
        w.to(dtype),
        torch.zeros(1, w.shape[0], dtype=dtype),
        s_rows,
        t_rows,
        weights.to(dtype),
        0.1,
        0.04,
        dtype=product_dtype,
    )
    (loss * scale).backward()
    return loss.double(), z.grad.double() / scale, ws.grad.double() / scale


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_products_keep_the_gradients_of_full_precision(half):
    """Under autocast the K-wide products run in the half type, as the heads' last layer would; the gradients
    stay within half-precision rounding of float64 (fp16: the gradient products run in fp32, since before loss
    scaling a softmax row times a pair weight underflows fp16), and the half type is really used."""
    case = _half_precision_case()
    ref_loss, ref_z, ref_w = _fused_grads(case, torch.float64, torch.float64)
    loss, gz, gw = _fused_grads(case, torch.float32, half)
    full_loss, _, _ = _fused_grads(case, torch.float32, torch.float32)
    rel = lambda x, r: float((x - r).norm() / r.norm())  # noqa: E731
    tol = 2e-2 if half == torch.bfloat16 else 3e-3
    assert rel(gz, ref_z) < tol and rel(gw, ref_w) < tol
    assert abs(float(loss - ref_loss)) < tol * abs(float(ref_loss))
    assert abs(float(loss - full_loss)) > abs(float(full_loss - ref_loss))  # the products did run in the half type


def test_a_retained_graph_gives_the_same_gradients_twice_and_no_grad_forms_none():
    from torch.utils.flop_counter import FlopCounterMode

    from esvit.losses.chunked import fused_cross_entropy

    gen = torch.Generator().manual_seed(17)
    n, m, d, k = 10, 6, 8, 64
    z_s, w_s = (
        torch.randn(n, d, generator=gen, requires_grad=True),
        torch.randn(k, d, generator=gen, requires_grad=True),
    )
    args = (
        torch.randn(m, d, generator=gen),
        torch.randn(k, d, generator=gen),
        torch.zeros(1, k),
        torch.arange(n),
        torch.arange(n) % m,
        torch.ones(n),
        0.1,
        0.04,
    )
    loss, t_sum = fused_cross_entropy(z_s, w_s, *args)
    assert not t_sum.requires_grad
    first = torch.autograd.grad(loss * 2.0, (z_s, w_s), retain_graph=True)
    second = torch.autograd.grad(loss * 2.0, (z_s, w_s))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fused_cross_entropy(z_s, w_s, *args)
    assert counter.get_total_flops() == 2 * k * d * (2 * m + n)  # teacher logits, W^T q, student logits only
