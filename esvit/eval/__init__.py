"""Evaluation: cached features, weighted k-NN, the transfer linear probe, metrics."""

from esvit.eval.knn import KS, knn_classify
from esvit.eval.metrics import METRICS
from esvit.eval.probe import LAMBDA_GRID, run_probe

__all__ = ["KS", "knn_classify", "METRICS", "LAMBDA_GRID", "run_probe"]
