"""The ``eval`` section of the workflow config: its defaults are the evaluation commands' defaults too.

Plain data over :mod:`esvit.fields` (no torch): the k-NN, extraction and linear modules read their defaults from
here, and :mod:`esvit.config` nests it in the workflow config.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from esvit.fields import option

__all__ = ["EvalConfig"]


@dataclasses.dataclass
class EvalConfig:
    """Evaluation of every run on held-out datasets: cached features, k-NN and the linear probe."""

    datasets: list[str] = option([], help="Datasets (keys of `datasets`, with train and test splits) to evaluate on.")
    random_init_baseline: bool = option(
        True,
        help="Also evaluate the runs' architectures at random initialisation ({run}_random, once per architecture "
        "and image size).",
    )
    batch_size: int = option(256, gt=0, help="Images per extraction batch.")
    workers: int = option(2, min=0, help="Data-loader workers per extraction job.")
    device: str = option(
        "auto",
        help="Device of extraction, probes and the linear protocol: auto (the GPU when the job sees one), cpu, cuda "
        "or cuda:N.",
    )
    knn_ks: list[int] = option([10, 20, 100, 200], nonempty=True, help="k values of the k-NN (k=20 is reported).")
    knn_temperature: float = option(0.07, gt=0, help="Temperature of the k-NN vote weights.")
    linear_datasets: list[str] = option(
        [],
        help="Datasets (keys of `datasets`) for the ImageNet linear protocol on the last-4-blocks features, and its "
        "k-NN.",
    )
    linear_mode: Literal["fast", "paper"] = option(
        "fast", help="fast: cached centre-crop features; paper: augmented views through the frozen backbone."
    )
    linear_epochs: int = option(100, gt=0, help="Epochs of the linear protocol (paper: 100).")
    linear_lr: float = option(1e-3, gt=0, help="Base learning rate of the linear protocol, scaled by batch / 256.")
    linear_batch_size: int = option(256, gt=0, help="Batch size of the linear protocol.")
    correspondence_dataset: str | None = option(
        None,
        help="Dataset (a key of `datasets`) whose held-out images the region correspondence diagnostic (esvit viz) "
        "uses; null: the first of datasets, else of linear_datasets.",
    )
