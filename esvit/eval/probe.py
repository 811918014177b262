"""The transfer linear probe (CLIP / ELEVATER protocol, docs/algorithm.md §4 and docs/datasets.md §2.6).

L2-regularised multinomial logistic regression on cached features, with the objective of scikit-learn's
``LogisticRegression(C=1/lambda)`` (so results can be checked against it):

    minimise  sum_i CE(W x_i + b, y_i) + lambda / 2 * ||W||^2        (bias not regularised)

solved full-batch by scipy's L-BFGS-B (the solver scikit-learn's ``lbfgs`` runs: about one evaluation per
iteration) with the loss and gradient computed in torch (float32, on the features' device). lambda is searched
over ``logspace(-6, 6, 97)`` on a validation split: the 7 decades 1e-6, 1e-4, ..., 1e6 first, then a peak
search whose step halves 8 -> 4 -> 2 -> 1 around the best. Each fit starts from the solutions already found:
the neighbour on the regularisation path, or, between two fitted lambdas, their interpolation in log lambda
(a near-solution: a few iterations finish it). The winner is refit on train + val and scored on test with the
dataset's metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from esvit.eval.checks import check_features
from esvit.eval.metrics import METRICS
from esvit.progress import progress

__all__ = ["LAMBDA_GRID", "fit_logreg", "lambda_search", "ProbeResult", "run_probe", "standardize"]

LAMBDA_GRID = np.logspace(-6, 6, 97)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """z-score every split with the train split's mean and std (part of the probe, for conditioning)."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return tuple((x - mean) / std for x in (train, *others))


@dataclass
class LogReg:
    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lam: float,
    init: LogReg | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> LogReg:
    """Minimise mean CE + lam/(2N) ||W||^2 (scikit-learn's objective, scaled by 1/N) with scipy's L-BFGS-B.

    Args:
        x: [N, D] features (float32; float64 for exact comparisons); y: [N] int labels, or [N, C] multi-hot
            float targets (multi-label: one binary logistic regression per class, all with the same lambda).
        lam: the L2 strength (scikit-learn's 1 / C).
        init: warm start.
        max_iter: iterations at most; tol: stop when the max-abs gradient (of the 1/N-scaled objective) is
            below it, as scikit-learn's ``tol``.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, d = x.shape
    multilabel = y.ndim == 2
    if init is not None:
        w0, b0 = init.weight, init.bias
    elif multilabel:  # the optimum for W = 0: the logit of each class's frequency
        w0, freq = torch.zeros(n_classes, d), ((y.sum(0) + 0.5) / (n + 1)).cpu().double()
        b0 = freq.log() - (1 - freq).log()
    else:  # the optimum for W = 0: log class priors (the strong-regularisation end of the path)
        w0 = torch.zeros(n_classes, d)
        b0 = (torch.bincount(y.cpu(), minlength=n_classes).double().clamp_min(0.5) / n).log()
    theta0 = torch.cat([w0.reshape(-1).cpu(), b0.cpu()]).double().numpy()
    nw = n_classes * d

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta).to(device=x.device, dtype=x.dtype)
        w, b = t[:nw].view(n_classes, d), t[nw:]
        logits = torch.addmm(b, x, w.T)
        if multilabel:  # sum of the per-class binary losses, / N
            data = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / n
            g = torch.sigmoid(logits).sub_(y).div_(n)
        else:
            data = F.cross_entropy(logits, y, reduction="mean")
            g = torch.softmax(logits, 1)
            g[torch.arange(n, device=x.device), y] -= 1.0
            g.div_(n)
        loss = data + lam / (2 * n) * (w * w).sum()
        grad_w = (x.T @ g).T + (lam / n) * w  # x.T @ g: the faster layout of the same product
        return float(loss), torch.cat([grad_w.reshape(-1), g.sum(0)]).double().cpu().numpy()

    # scipy's BLAS threads would spin against torch's on the same cores; its vector updates need one
    with threadpool_limits(1, user_api="blas"):
        res = minimize(
            loss_and_grad,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": tol, "ftol": 64 * np.finfo(float).eps, "maxls": 50},
        )
    t = torch.from_numpy(res.x).to(device=x.device, dtype=x.dtype)
    return LogReg(t[:nw].view(n_classes, d).clone(), t[nw:].clone())


def _start(models: dict[int, LogReg], i: int) -> LogReg | None:
    """A starting point for grid index ``i``: between two fitted indices their interpolation (in log lambda),
    else the nearest fitted one; None before the first fit."""
    if not models:
        return None
    lo = max((k for k in models if k < i), default=None)
    hi = min((k for k in models if k > i), default=None)
    if lo is None or hi is None:
        return models[lo if hi is None else hi]
    a = (i - lo) / (hi - lo)
    return LogReg(torch.lerp(models[lo].weight, models[hi].weight, a), torch.lerp(models[lo].bias, models[hi].bias, a))


def lambda_search(evaluate: Callable[[int], float], n_grid: int = len(LAMBDA_GRID)) -> tuple[int, dict[int, float]]:
    """Coarse-then-halving search over grid indices.

    Args:
        evaluate: ``index -> validation score`` (run_probe starts each fit from the ones before: ``_start``).

    Returns:
        (best index, {index: score} of every evaluated point). Ties go to the stronger regularisation.
    """
    scores: dict[int, float] = {}
    for i in reversed(range(0, n_grid, 16)):  # 1e6, 1e4, ..., 1e-6: down the regularisation path
        scores[i] = evaluate(i)
    best = max(scores, key=lambda i: (scores[i], i))
    step = 8
    while step >= 1:
        for j in (best - step, best + step):
            if 0 <= j < n_grid and j not in scores:
                scores[j] = evaluate(j)
        best = max(scores, key=lambda i: (scores[i], i))
        step //= 2
    return best, scores


@dataclass
class ProbeResult:
    metric: str
    value: float
    best_lambda: float
    val_scores: dict[float, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    wall_s: float = 0.0


def run_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    metric: str = "accuracy",
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    search_tol: float = 1e-4,
    search_max_iter: int = 300,
    show_progress: bool = False,
) -> ProbeResult:
    """The whole protocol: split (if no val), standardise, search lambda, refit on train + val, score test.

    Labels are [N] class indices, or [N, C] multi-hot targets for multi-label sets (metric 11point_mAP).
    The search's fits use scikit-learn's gradient tolerance (``search_tol``, 1e-4 on the mean objective) with
    fewer iterations at most (``search_max_iter``) than the final refit (1000): they only rank lambdas by
    validation score, and each starts from the solutions already found, so most converge in a few
    iterations. (A looser tolerance lets a warm start pass as converged for the next lambda, and the search
    then compares copies.) ``show_progress``: a bar over the fits (at most 7 coarse + 8 halving + the refit).
    """
    t0 = time.perf_counter()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    check_features((train_x, train_y), (test_x, test_y), (val_x, val_y) if val_x is not None else None)
    train_x, test_x = train_x.float(), test_x.float()
    multilabel = train_y.ndim == 2
    if multilabel:
        train_y, test_y = train_y.float(), test_y.float()
    if val_x is None:
        from esvit.data.sources import stratified_split

        if multilabel:  # no single class to stratify on: a seeded random fraction
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_y)))
            va, tr = (
                perm[: round(val_fraction * len(perm))].sort().values,
                perm[round(val_fraction * len(perm)) :].sort().values,
            )
        else:
            parts = stratified_split(train_y.numpy(), val_fraction, seed)
            tr, va = torch.from_numpy(parts["train"]), torch.from_numpy(parts["test"])
        fit_x, fit_y, val_x, val_y = train_x[tr], train_y[tr], train_x[va], train_y[va]
    else:
        fit_x, fit_y, val_x = train_x, train_y, val_x.float()
        val_y = val_y.float() if multilabel else val_y
    n_classes = train_y.shape[1] if multilabel else int(max(train_y.max(), test_y.max(), val_y.max())) + 1
    score = METRICS[metric]

    fx, vx = (t.to(device) for t in standardize(fit_x, val_x))
    fy, vy = fit_y.to(device), val_y.to(device)
    models: dict[int, LogReg] = {}
    n_coarse = len(range(0, len(LAMBDA_GRID), 16))
    bar = progress(
        n_coarse + 2 * 4 + 1, f"probe {metric}", unit="fit", enabled=show_progress
    )  # 2 per halving step (8, 4, 2, 1)

    def evaluate(i: int) -> float:
        models[i] = fit_logreg(
            fx, fy, n_classes, float(LAMBDA_GRID[i]), init=_start(models, i), max_iter=search_max_iter, tol=search_tol
        )
        pred = models[i].logits(vx)
        value = score(pred.cpu(), vy.cpu())
        bar.set_postfix(lam=f"{float(LAMBDA_GRID[i]):.2e}", val=f"{value:.2f}")
        bar.update(1)
        return value

    best, scores = lambda_search(evaluate)
    bar.set_postfix(refit=f"lam {float(LAMBDA_GRID[best]):.2e} on train + val")
    all_x = torch.cat([fit_x, val_x])
    all_y = torch.cat([fit_y, val_y])
    ax, tx = (t.to(device) for t in standardize(all_x, test_x))
    final = fit_logreg(ax, all_y.to(device), n_classes, float(LAMBDA_GRID[best]), init=models[best])
    bar.update(1)
    bar.close()
    value = score(final.logits(tx).cpu(), test_y)
    return ProbeResult(
        metric,
        value,
        float(LAMBDA_GRID[best]),
        {float(LAMBDA_GRID[i]): s for i, s in sorted(scores.items())},
        len(fit_x),
        len(val_x),
        len(test_x),
        round(time.perf_counter() - t0, 3),
    )
