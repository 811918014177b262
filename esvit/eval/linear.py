"""The ImageNet linear protocol (docs/algorithm.md §4, ``eval_linear.py``): a linear layer on frozen features.

Swin: the average-pooled outputs of the last 4 blocks, concatenated (``Backbone.last_blocks``). The layer is
initialised N(0, 0.01) with a zero bias and trained by SGD (momentum 0.9, no weight decay) with a cosine
schedule to 0 over 100 epochs, lr = base lr x batch / 256. Top-1 on the validation split is logged every
epoch; the result carries both the last epoch's and the best epoch's value (the official code logs the max).

Two modes:

* ``fast`` — from the cached centre-crop features (``esvit extract``): seconds to minutes per run, the
  number to compare runs with.
* ``paper`` — as the paper: every epoch sees new RandomResizedCrop + flip views of the training images,
  pushed through the frozen backbone; validation uses the cached centre-crop features (which is what
  the official validation transform computes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from esvit.defaults import field_default
from esvit.eval.checks import check_features
from esvit.eval.config import EvalConfig
from esvit.progress import progress

__all__ = ["LinearResult", "linear_fast", "linear_paper", "augment_transform"]

# The workflow config's defaults (eval.linear_*, eval.workers), which the rule and `esvit linear` pass.
EPOCHS: int = field_default(EvalConfig, "linear_epochs")
BATCH_SIZE: int = field_default(EvalConfig, "linear_batch_size")
BASE_LR: float = field_default(EvalConfig, "linear_lr")
WORKERS: int = field_default(EvalConfig, "workers")


@dataclass
class LinearResult:
    top1: float  # after the last epoch
    best_top1: float  # max over epochs (what the official code prints)
    best_epoch: int
    history: list[float] = field(default_factory=list)  # val top-1 per epoch
    epochs: int = 0
    lr: float = 0.0  # the scaled learning rate
    wall_s: float = 0.0


def _make_head(dim: int, n_classes: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(dim, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    return head


@torch.no_grad()
def _top1(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((head(x[i : i + batch].float()).argmax(-1) == y[i : i + batch]).sum())
    return 100.0 * correct / max(len(x), 1)


def _train(
    make_epoch,
    head: nn.Linear,
    epochs: int,
    lr: float,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    desc: str,
    show_progress: bool,
) -> LinearResult:
    t0 = time.perf_counter()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)  # per epoch, as eval_linear.py
    history = []
    bar = progress(epochs, desc, unit="epoch", enabled=show_progress)
    for epoch in range(epochs):
        head.train()
        for x, y in make_epoch(epoch):
            loss = nn.functional.cross_entropy(head(x.float()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        history.append(_top1(head, val_x, val_y))
        bar.update(1)
        bar.set_postfix(top1=f"{history[-1]:.2f}")
    bar.close()
    best = max(range(epochs), key=lambda e: history[e])
    return LinearResult(history[-1], history[best], best + 1, history, epochs, lr, round(time.perf_counter() - t0, 3))


def linear_fast(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    base_lr: float = BASE_LR,
    seed: int = 0,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> LinearResult:
    """Train the linear layer on cached features (shuffled each epoch, seeded), on ``device`` (the features are
    moved there once; the shuffling order is drawn on the CPU, so it is the same on every device)."""
    check_features((train_x, train_y), (val_x, val_y))
    n_classes = int(max(train_y.max(), val_y.max())) + 1
    head = _make_head(train_x.shape[1], n_classes, seed).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    train_x, train_y = train_x.to(device), train_y.long().to(device)

    def make_epoch(epoch: int):
        order = torch.randperm(len(train_x), generator=g).to(device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield train_x[idx], train_y[idx]

    lr = base_lr * batch_size / 256
    return _train(
        make_epoch, head, epochs, lr, val_x.to(device), val_y.long().to(device), "linear (cached)", show_progress
    )


def augment_transform(size: int = 224):
    """The paper's training views: RandomResizedCrop (bicubic) + horizontal flip + ImageNet normalisation."""
    import torchvision.transforms as T

    from esvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def linear_paper(
    backbone,
    train_shards: str | Path,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    image_size: int = 224,
    n_blocks: int = 4,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    base_lr: float = BASE_LR,
    seed: int = 0,
    num_workers: int = WORKERS,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> LinearResult:
    """Train the linear layer on augmented views through the frozen ``backbone`` (one pass over the shard set's
    size per epoch, shuffled and seeded per epoch); validate on the cached centre-crop features ``val_x``."""
    from esvit.data.pipeline import make_loader, open_shards, train_pipeline

    check_features((val_x, val_y), (val_x, val_y), names={"train": "the validation features"})
    shards = open_shards(train_shards)
    backbone = backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    steps = math.ceil(shards.total / batch_size)
    n_classes = max(len(shards.classes), int(val_y.max()) + 1)
    head = _make_head(val_x.shape[1], n_classes, seed).to(device)

    def make_epoch(epoch: int):
        pipe = train_pipeline(shards, augment_transform(image_size), batch_size, seed=seed, epoch=epoch)
        for i, (images, labels) in enumerate(make_loader(pipe, num_workers, steps)):
            if i >= steps:
                break
            with torch.no_grad():
                feats = backbone.last_blocks(images.to(device), n_blocks)
            yield feats, labels.long().to(device)

    lr = base_lr * batch_size / 256
    return _train(make_epoch, head, epochs, lr, val_x.to(device), val_y.to(device), "linear (augmented)", show_progress)
