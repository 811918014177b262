"""The evaluation commands end to end: feature caches in, one metrics record out (``esvit knn / probe / linear``).

Each function reads the train and test feature caches (``esvit extract``), checks them (the same checkpoint,
the features the protocol needs, finite values, matching sizes; :mod:`esvit.eval.checks`), runs its protocol,
writes the :class:`~esvit.eval.record.MetricsRecord` atomically and prints one line with the score. A wrong
input stops with one line naming the file and what to do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from esvit.errors import UsageError
from esvit.eval import linear
from esvit.eval.config import EvalConfig
from esvit.eval.features import load_features, targets
from esvit.eval.record import MetricsRecord

DEVICE: str = EvalConfig().device  # where the evaluation runs by default: the workflow config's default

__all__ = ["evaluate_knn", "evaluate_probe", "evaluate_linear", "pick_device", "check_same_checkpoint", "check_caches"]

Cache = dict[str, Any]


def pick_device(name: str, command: str) -> torch.device:
    """The device a command runs on (``auto``: the GPU when one is visible), said in its log.

    Raises:
        UsageError: the device asked for is not available here.
    """
    from esvit.device import DeviceError, describe_device, resolve_device

    try:
        device = resolve_device(name)
    except DeviceError as exc:
        raise UsageError(f"--device: {exc}") from None
    print(f"{command}: device {describe_device(device)}", flush=True)
    return device


def check_same_checkpoint(train: Cache, test: Cache) -> None:
    """Refuse train and test features extracted from different checkpoints."""
    a, b = train["meta"].get("checkpoint_sha256"), test["meta"].get("checkpoint_sha256")
    if a != b:
        raise UsageError(f"train and test features come from different checkpoints ({a} vs {b}); re-extract")


def check_caches(caches: dict[str, Cache], files: dict[str, str | Path], feature: str = "pooled") -> None:
    """One line for a missing feature kind, empty, non-finite (naming the sample), mismatched or single-class
    inputs, naming the file.

    Args:
        caches: ``train``, ``test`` and optionally ``val`` feature caches; files: the file each was read from.
        feature: the features the protocol uses (``pooled`` or ``last_blocks``).
    """
    from esvit.eval.checks import check_features

    for role, cache in caches.items():
        if feature not in cache:
            raise UsageError(f"{files[role]} holds no {feature} features; re-extract it with `esvit extract`")
    sets = {role: (c[feature], targets(c)) for role, c in caches.items()}
    check_features(
        sets["train"],
        sets["test"],
        sets.get("val"),
        names={role: str(files[role]) for role in caches},
        keys={role: c.get("keys", []) for role, c in caches.items()},
    )


def _finish(
    out: str | Path,
    run: str,
    dataset: str,
    eval_name: str,
    metric: str,
    value: float,
    metrics: dict[str, Any],
    hparams: dict[str, Any],
    train: Cache,
    test: Cache,
    wall: float,
    device: torch.device | str = "cpu",
) -> MetricsRecord:
    """Write the metrics record to ``out`` and say the score."""
    meta = train["meta"]
    record = MetricsRecord(
        run=run,
        arch=meta.get("arch"),
        dataset=dataset,
        eval=eval_name,
        metric_name=metric,
        value=round(value, 4),
        metrics=metrics,
        n_train=len(train["labels"]),
        n_test=len(test["labels"]),
        hparams=hparams,
        checkpoint=meta.get("checkpoint"),
        checkpoint_sha256=meta.get("checkpoint_sha256"),
        wall_s=round(wall, 3),
        device=str(device),
    )
    record.write(out)
    print(f"{eval_name} {run}/{dataset}: {metric} = {value:.2f}")
    return record


def evaluate_knn(
    train_file: str | Path,
    test_file: str | Path,
    out: str | Path,
    run: str,
    dataset: str,
    ks: tuple[int, ...],
    temperature: float,
) -> MetricsRecord:
    """Weighted k-NN on the pooled features (:func:`esvit.eval.knn.knn_classify`); the headline is k = 20
    when it is among ``ks``, else the first k."""
    from esvit.eval.knn import knn_classify

    t0 = time.perf_counter()
    train, test = load_features(train_file), load_features(test_file)
    check_same_checkpoint(train, test)
    if train["meta"].get("multilabel"):
        raise UsageError(
            f"{train_file} is multi-label (a VOC-style set); k-NN classification does not apply, use `esvit probe`"
        )
    check_caches({"train": train, "test": test}, {"train": train_file, "test": test_file})
    acc = knn_classify(
        train["pooled"], train["labels"], test["pooled"], test["labels"], ks, temperature, show_progress=True
    )
    best_k = 20 if 20 in acc else ks[0]
    return _finish(
        out,
        run,
        dataset,
        "knn",
        "top1",
        acc[best_k],
        {f"top1_k{k}": v for k, v in acc.items()},
        {"k": best_k, "temperature": temperature},
        train,
        test,
        time.perf_counter() - t0,
    )


def evaluate_probe(
    train_file: str | Path,
    test_file: str | Path,
    out: str | Path,
    run: str,
    dataset: str,
    metric: str = "accuracy",
    val_file: str | Path | None = None,
    device: str = DEVICE,
) -> MetricsRecord:
    """The transfer linear probe with its lambda search (:func:`esvit.eval.probe.run_probe`) on the pooled
    features; ``val_file``: the validation split's cache (default: a stratified 20 % of train)."""
    from esvit.eval.probe import run_probe

    train, test = load_features(train_file), load_features(test_file)
    check_same_checkpoint(train, test)
    val = load_features(val_file) if val_file else None
    if train["meta"].get("multilabel") and metric != "11point_mAP":
        raise UsageError(f"{train_file} is multi-label (a VOC-style set): use --metric 11point_mAP")
    caches = {"train": train, "test": test, **({"val": val} if val else {})}
    check_caches(caches, {"train": train_file, "test": test_file, "val": val_file})
    where = pick_device(device, "probe")
    res = run_probe(
        train["pooled"],
        targets(train),
        test["pooled"],
        targets(test),
        metric,
        val["pooled"] if val else None,
        targets(val) if val else None,
        device=where,
        show_progress=True,
    )
    hparams = {"lambda": res.best_lambda, "val_scores": res.val_scores, "n_fit": res.n_train, "n_val": res.n_val}
    return _finish(
        out, run, dataset, "probe", metric, res.value, {metric: res.value}, hparams, train, test, res.wall_s, where
    )


def evaluate_linear(
    train_file: str | Path,
    test_file: str | Path,
    out: str | Path,
    run: str,
    dataset: str,
    mode: str = "fast",
    shards: str | Path | None = None,
    epochs: int = linear.EPOCHS,
    batch_size: int = linear.BATCH_SIZE,
    lr: float = linear.BASE_LR,
    seed: int = 0,
    workers: int = linear.WORKERS,
    device: str = DEVICE,
    show_progress: bool = True,
) -> MetricsRecord:
    """The ImageNet linear protocol on the last-4-blocks features: ``fast`` trains on the cached centre-crop
    features, ``paper`` on augmented views of ``shards`` through the frozen backbone the features came from."""
    from esvit.eval.features import load_backbone
    from esvit.eval.linear import linear_fast, linear_paper

    train, test = load_features(train_file), load_features(test_file)
    check_same_checkpoint(train, test)
    check_caches({"train": train, "test": test}, {"train": train_file, "test": test_file}, "last_blocks")
    where = pick_device(device, f"linear ({mode})")
    kw = dict(epochs=epochs, batch_size=batch_size, base_lr=lr, seed=seed, device=where, show_progress=show_progress)
    if mode == "fast":
        res = linear_fast(train["last_blocks"], train["labels"], test["last_blocks"], test["labels"], **kw)
    else:
        if not shards:
            raise UsageError("--mode paper needs --shards (the training split's shard folder)")
        meta = train["meta"]
        backbone, now = load_backbone(meta.get("checkpoint"), meta["arch"], seed=meta.get("seed", 0))
        if now["checkpoint_sha256"] != meta["checkpoint_sha256"]:
            raise UsageError(f"{meta['checkpoint']} changed since {train_file} was extracted; re-extract the features")
        res = linear_paper(
            backbone,
            shards,
            test["last_blocks"],
            test["labels"],
            image_size=meta["image_size"],
            n_blocks=meta["n_blocks"],
            num_workers=workers,
            **kw,
        )
    metrics = {"top1": res.top1, "best_top1": res.best_top1, "best_epoch": res.best_epoch, "history": res.history}
    hparams = {
        "mode": mode,
        "epochs": res.epochs,
        "batch_size": batch_size,
        "lr": res.lr,
        "n_blocks": train["meta"].get("n_blocks"),
    }
    return _finish(
        out, run, dataset, f"linear_{mode}", "top1", res.top1, metrics, hparams, train, test, res.wall_s, where
    )
