"""Weighted k-NN classification (docs/algorithm.md §4, as DINO / EsViT's eval_knn.py).

Features are L2-normalised; each query takes its k most cosine-similar training samples, each voting for
its class with weight exp(sim / T), T = 0.07 (the config's ``eval.knn_temperature``). The bank is processed in
chunks on both sides (queries and training samples) with a running top-k, so ImageNet-size banks (1.28 M x 768)
run within a few GB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esvit.defaults import field_default
from esvit.eval.checks import FeatureError, check_features
from esvit.eval.config import EvalConfig
from esvit.progress import progress

__all__ = ["knn_classify", "KS", "TEMPERATURE"]

# The workflow config's defaults (eval.knn_ks, eval.knn_temperature): the paper's k values and temperature.
KS: tuple[int, ...] = tuple(field_default(EvalConfig, "knn_ks"))
TEMPERATURE: float = field_default(EvalConfig, "knn_temperature")


@torch.no_grad()
def knn_classify(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...] = KS,
    temperature: float = TEMPERATURE,
    n_classes: int | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
    device: str = "cpu",
    show_progress: bool = False,
) -> dict[int, float]:
    """Top-1 accuracy (percent) of weighted k-NN for each k.

    Args:
        train, test: [N, D] features (any float dtype; compared in float32 after L2 normalisation).
        ks: the k values (each <= the training set size is used as is; larger ones are clamped).
        query_chunk, bank_chunk: rows per block (memory ~ query_chunk x bank_chunk floats).
        show_progress: a bar over the test images (periodic log lines when stderr is not a terminal).
    """
    check_features((train, train_labels), (test, test_labels))
    if any(k < 1 for k in ks) or temperature <= 0:
        raise FeatureError(
            f"k-NN needs every k >= 1 and a temperature > 0 (got ks {tuple(ks)}, temperature {temperature})"
        )
    n_classes = n_classes or int(train_labels.max()) + 1
    k_max = min(max(ks), len(train))
    bank_labels = train_labels.to(device)
    correct = {k: 0 for k in ks}
    bar = progress(len(test), "k-NN", unit="img", enabled=show_progress)
    for q0 in range(0, len(test), query_chunk):
        q = F.normalize(test[q0 : q0 + query_chunk].to(device, torch.float32), dim=-1)
        best_sim = torch.full((len(q), 0), -2.0, device=device)
        best_idx = torch.zeros((len(q), 0), dtype=torch.long, device=device)
        for b0 in range(0, len(train), bank_chunk):
            bank = F.normalize(train[b0 : b0 + bank_chunk].to(device, torch.float32), dim=-1)
            sim = q @ bank.T
            s, i = sim.topk(min(k_max, sim.shape[1]), dim=1)
            best_sim, order = torch.cat([best_sim, s], 1).topk(min(k_max, best_sim.shape[1] + s.shape[1]), dim=1)
            best_idx = torch.cat([best_idx, i + b0], 1).gather(1, order)
        weights = (best_sim / temperature).exp()
        votes_labels = bank_labels[best_idx]  # [q, k_max], sorted by similarity
        truth = test_labels[q0 : q0 + query_chunk].to(device)
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(len(q), n_classes, device=device)
            votes.scatter_add_(1, votes_labels[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == truth).sum())
        bar.update(len(q))
    bar.close()
    return {k: 100.0 * correct[k] / len(test) for k in ks}
