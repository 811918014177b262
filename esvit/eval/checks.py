"""Checks on what the evaluations read: a wrong input stops with one line instead of giving a wrong number.

A single NaN row among 1,438 features turns k-NN accuracy from 97 % into 10 % without any error (every
similarity with it is NaN and top-k picks NaNs first); features and labels of different lengths, or train and
test of different widths, give numbers that mean nothing. Every evaluation (k-NN, the probe, the linear
protocol) calls :func:`check_features` first.
"""

from __future__ import annotations

import torch

from esvit.errors import FeatureError

__all__ = ["FeatureError", "check_features", "first_non_finite"]


def first_non_finite(x: torch.Tensor, chunk: int = 65536) -> int | None:
    """Index of the first row of ``x`` with a NaN or inf, or None. Chunk by chunk in the stored dtype (a
    NaN-propagating max per chunk), so an ImageNet-sized cache is never copied whole."""
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        if part.numel() and not torch.isfinite(part.abs().amax()):
            rows = ~torch.isfinite(part).reshape(len(part), -1).all(1)
            return start + int(rows.nonzero()[0])
    return None


def check_features(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    names: dict[str, str] | None = None,
    keys: dict[str, list] | None = None,
) -> None:
    """Raise :class:`FeatureError` naming the first problem: an empty set, features and labels of different
    lengths, non-finite features (with the first bad sample), train / test / val of different widths, or fewer
    than two classes to train on.

    Args:
        train, test, val: ``(features [N, D], labels [N] or multi-hot [N, C])``.
        names: how to name each set in messages (e.g. its file); keys: the sample keys of each set, to name the
            first bad sample.
    """
    names, keys = names or {}, keys or {}
    sets = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    for role, (x, y) in sets.items():
        name = names.get(role, f"the {role} features")
        if x.ndim != 2 or len(x) == 0:
            raise FeatureError(f"{name}: no samples (shape {tuple(x.shape)}); re-extract the features")
        if len(x) != len(y):
            raise FeatureError(f"{name}: {len(x)} features but {len(y)} labels; re-extract the features")
        bad = first_non_finite(x)
        if bad is not None:
            sample = f" ({keys[role][bad]})" if role in keys and bad < len(keys[role]) else ""
            raise FeatureError(
                f"{name}: non-finite features, first at sample {bad}{sample}; re-extract them (in fp32, or from a "
                "checkpoint that is not diverged)"
            )
    dim = train[0].shape[1]
    for role, (x, _) in sets.items():
        if x.shape[1] != dim:
            raise FeatureError(
                f"{names.get(role, f'the {role} features')} have {x.shape[1]} dimensions, the train features {dim}: "
                "they come from different models or layers; extract both from the same checkpoint"
            )
    y = train[1]
    classes = int((y.sum(0) > 0).sum()) if y.ndim == 2 else int(torch.unique(y).numel())
    if classes < 2:
        raise FeatureError(
            f"{names.get('train', 'the train features')}: labels of only {classes} class; a classifier needs two or "
            "more"
        )
