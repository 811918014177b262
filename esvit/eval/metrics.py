"""Per-dataset metrics (docs/datasets.md §2.2): accuracy, mean-per-class recall, 11-point mAP (multi-label)."""

from __future__ import annotations

import torch

__all__ = ["METRICS", "accuracy", "mean_per_class", "map_11point"]


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((scores.argmax(-1) == labels).float().mean() * 100)


def mean_per_class(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes present in ``labels`` of the per-class recall, in percent."""
    pred = scores.argmax(-1)
    recalls = [(pred[labels == c] == c).float().mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean() * 100)


def map_11point(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """VOC 2007 11-point interpolated average precision, averaged over classes, in percent.

    Args:
        scores: [N, C] real-valued scores; targets: [N, C] multi-hot {0, 1}.
    """
    aps = []
    for c in range(scores.shape[1]):
        order = torch.argsort(scores[:, c], descending=True)
        t = targets[order, c].float()
        if t.sum() == 0:
            continue
        tp = torch.cumsum(t, 0)
        precision = tp / torch.arange(1, len(t) + 1)
        recall = tp / t.sum()
        ap = 0.0
        for r in torch.linspace(0, 1, 11):
            above = precision[recall >= r]
            ap += float(above.max()) if len(above) else 0.0
        aps.append(ap / 11)
    return float(sum(aps) / len(aps) * 100)


METRICS = {"accuracy": accuracy, "mean_per_class": mean_per_class, "11point_mAP": map_11point}
