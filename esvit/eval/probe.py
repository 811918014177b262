"""The transfer linear probe (CLIP / ELEVATER protocol, reference §4 and datasets.md §2.6).

L2-regularised multinomial logistic regression on cached features, with the objective of scikit-learn's
``LogisticRegression(C=1/lambda)`` (so results can be checked against it):

    minimise  sum_i CE(W x_i + b, y_i) + lambda / 2 * ||W||^2        (bias not regularised)

solved full-batch by L-BFGS in torch (float32, warm-started from the neighbouring lambda). lambda is searched
over ``logspace(-6, 6, 97)`` on a validation split: the 7 decades 1e-6, 1e-4, ..., 1e6 first, then a peak
search whose step halves 8 -> 4 -> 2 -> 1 around the best; the winner is refit on train + val and scored on
test with the dataset's metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from esvit.eval.metrics import METRICS

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


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, init: LogReg | None = None,
               max_iter: int = 1000, tol: float = 1e-4, x_lowp: torch.Tensor | None = None) -> LogReg:  # fmt: skip
    """Minimise sum CE + lam/2 ||W||^2 with L-BFGS (strong Wolfe line search).

    Args:
        x: [N, D] float32 features; y: [N] int labels, or [N, C] multi-hot float targets (multi-label: one
            binary logistic regression per class, all with the same lambda, summed).
        lam: the L2 strength (scikit-learn's 1 / C).
        init: warm start.
        x_lowp: ``x`` in bfloat16: then the two matrix products run in bfloat16 (fp32 accumulation, ~2x
            faster on CPUs with AVX512-BF16); the parameters, softmax and L-BFGS stay in float32.
        max_iter: L-BFGS iterations at most; tol: stop when the max-abs gradient, relative to N, is below it.
    """
    n, d = x.shape
    w = (init.weight.clone() if init else torch.zeros(n_classes, d, dtype=x.dtype, device=x.device)).requires_grad_()
    multilabel = y.ndim == 2
    if init is None and multilabel:  # the optimum for W = 0: the logit of each class's frequency
        freq = ((y.sum(0) + 0.5) / (n + 1)).to(x.dtype)
        b = (freq.log() - (1 - freq).log()).to(x.device)
    elif init is None:  # the optimum for W = 0: log class priors (the strong-regularisation end of the path)
        prior = torch.bincount(y, minlength=n_classes).to(x.dtype).clamp_min(0.5) / n
        b = prior.log().to(x.device)
    else:
        b = init.bias.clone()
    b.requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=tol, tolerance_change=1e-12)  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # scaled by 1/N so tolerances do not depend on the dataset size; the minimiser is the same
        logits = (x_lowp @ w.to(x_lowp.dtype).T).float() + b if x_lowp is not None else x @ w.T + b
        data = (F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / n if multilabel
                else F.cross_entropy(logits, y, reduction="mean"))  # fmt: skip
        loss = data + lam / (2 * n) * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogReg(w.detach(), b.detach())


def lambda_search(evaluate: Callable[[int, int | None], float], n_grid: int = len(LAMBDA_GRID)) -> tuple[int, dict[int, float]]:
    """Coarse-then-halving search over grid indices.

    Args:
        evaluate: ``(index, warm_start_index) -> validation score``.

    Returns:
        (best index, {index: score} of every evaluated point). Ties go to the stronger regularisation.
    """
    scores: dict[int, float] = {}
    last = None
    for i in reversed(range(0, n_grid, 16)):  # 1e6, 1e4, ..., 1e-6: a regularisation path, each fit warm-
        scores[i] = evaluate(i, last)  # started from the stronger-regularised one before it (few iterations)
        last = i
    best = max(scores, key=lambda i: (scores[i], i))
    step = 8
    while step >= 1:
        for j in (best - step, best + step):
            if 0 <= j < n_grid and j not in scores:
                scores[j] = evaluate(j, best)
        best = max(scores, key=lambda i: (scores[i], i))
        step //= 2
    return best, scores


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "avx512_bf16" in open("/proc/cpuinfo").read()
    except (OSError, AttributeError, RuntimeError):
        return False


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


def run_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              metric: str = "accuracy", val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
              val_fraction: float = 0.2, seed: int = 0, device: str = "cpu", search_tol: float = 1e-4,
              search_max_iter: int = 300, search_precision: str = "auto") -> ProbeResult:  # fmt: skip
    """The whole protocol: split (if no val), standardise, search lambda, refit on train + val, score test.

    Labels are [N] class indices, or [N, C] multi-hot targets for multi-label sets (metric 11point_mAP).
    The search's fits use scikit-learn's gradient tolerance (``search_tol``, 1e-4 on the mean objective) with
    fewer iterations at most (``search_max_iter``) than the final refit (1000): they only rank lambdas by
    validation score, and each is warm-started from its neighbour on the path, so most converge in a few
    iterations. (A looser tolerance lets a warm start pass as converged for the next lambda, and the search
    then compares copies.) ``search_precision``: ``bf16`` runs the search's matrix products in bfloat16
    (``auto``: where the CPU has native bfloat16, or on CUDA); the final refit is always float32.
    """
    t0 = time.perf_counter()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    train_x, test_x = train_x.float(), test_x.float()
    for name, t in (("train features", train_x), ("test features", test_x)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} hold non-finite values; re-extract them")
    multilabel = train_y.ndim == 2
    if multilabel:
        train_y, test_y = train_y.float(), test_y.float()
    if val_x is None:
        from esvit.data.sources import stratified_split

        if multilabel:  # no single class to stratify on: a seeded random fraction
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_y)))
            va, tr = perm[: round(val_fraction * len(perm))].sort().values, perm[round(val_fraction * len(perm)) :].sort().values
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
    if search_precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"search_precision must be auto, fp32 or bf16 (got {search_precision!r})")
    if search_precision == "auto":
        search_precision = "bf16" if _native_bf16(fx.device) else "fp32"
    fx_lowp = fx.bfloat16() if search_precision == "bf16" else None

    def evaluate(i: int, warm: int | None) -> float:
        models[i] = fit_logreg(fx, fy, n_classes, float(LAMBDA_GRID[i]), init=models.get(warm), max_iter=search_max_iter,
                               tol=search_tol, x_lowp=fx_lowp)  # fmt: skip
        pred = models[i].logits(vx)
        return score(pred.cpu(), vy.cpu())

    best, scores = lambda_search(evaluate)
    all_x = torch.cat([fit_x, val_x])
    all_y = torch.cat([fit_y, val_y])
    ax, tx = (t.to(device) for t in standardize(all_x, test_x))
    final = fit_logreg(ax, all_y.to(device), n_classes, float(LAMBDA_GRID[best]), init=models[best])
    value = score(final.logits(tx).cpu(), test_y)
    return ProbeResult(metric, value, float(LAMBDA_GRID[best]), {float(LAMBDA_GRID[i]): s for i, s in sorted(scores.items())},
                       len(fit_x), len(val_x), len(test_x), round(time.perf_counter() - t0, 3))  # fmt: skip
