"""EsViT pipeline: sharding, view + region self-distillation pretraining, evaluation and reports."""

__version__ = "0.1.0"
