"""Typed, strict configuration.

The workflow config (``configs/config.yaml``) is loaded into a tree of dataclasses. Loading is strict: an
unknown key (with a did-you-mean), a wrong type, a zero or negative count, a missing path or an unknown
source name raises :class:`ConfigError` with one message that names the key, the value and what is allowed.
Snakemake validates the same YAML against ``workflow/schemas/config.schema.yaml``; a unit test keeps the
two in step (same keys, same defaults).

Fields are declared with :func:`esvit.fields.option` (constraints in their metadata) and loaded by
:func:`esvit.fields.from_dict`; this module adds the checks across keys (datasets named by runs, releases, continual
chains).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from esvit.archs import arch_names
from esvit.data.shards import ShardConfig
from esvit.data.sources import SOURCES
from esvit.download import load_releases
from esvit.errors import ConfigError
from esvit.eval.config import EvalConfig
from esvit.fields import CHECK_PATHS, apply_overrides, did_you_mean, from_dict, load_yaml, option, to_dict
from esvit.train.config import load_train_config

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "ShardConfig",
    "PipelineConfig",
    "PretrainRun",
    "ContinualFrom",
    "EvalConfig",
    "DownloadConfig",
    "from_dict",
    "load_config",
    "missing_paths",
    "load_yaml",
    "apply_overrides",
    "to_dict",
    "pretrain_overrides",
    "continual_checkpoint",
]


def _source_names() -> tuple[str, ...]:
    return tuple(sorted(SOURCES))


def _releases() -> tuple[str, ...]:
    return tuple(load_releases())


@dataclasses.dataclass
class DatasetConfig:
    """One dataset to shard."""

    source: str = option(choices=_source_names, help="Registered data source (`esvit sources` lists them).")
    root: str | None = option(None, help="Raw files of the source; null for packaged data or the default.")
    splits: list[str] = option(["train", "test"], nonempty=True, help="Splits to shard.")
    options: dict[str, Any] = option({}, help="Source-specific options (see `esvit sources`).")
    metric: Literal["accuracy", "mean_per_class", "11point_mAP"] = option(
        "accuracy",
        help="Metric of its linear probe (docs/datasets.md: accuracy, mean_per_class, 11point_mAP); transfer sets "
        "default to the registry's.",
    )
    download: bool = option(
        False,
        help="Fetch it into root first (the download_dataset rule: torchvision's URLs and checksums; transfer sets "
        "with auto_download in esvit/resources/datasets.yaml).",
    )


@dataclasses.dataclass
class ContinualFrom:
    """A run's starting point in continual mode: ``run``'s checkpoint after ``epoch`` epochs."""

    run: str = option(help="The (view-only) run to continue from, a key of `runs` with a config.")
    epoch: int = option(
        gt=0, help="Epochs of that run to start from (checkpoint<epoch>.pth; the paper: 200, or 180 for Swin-S/W14)."
    )


@dataclasses.dataclass
class PretrainRun:
    """One run to evaluate: a pretraining (a training config, a diff on the paper defaults, and the data it
    reads), or a released checkpoint evaluated as it is (``checkpoint`` + ``arch``, no pretraining)."""

    config: str | None = option(
        None,
        path="exists",
        help="Training config YAML (configs/pretrain/*.yaml, configs/paper/*.yaml); or give checkpoint.",
    )
    dataset: str | None = option(None, help="Dataset (a key of `datasets`) whose shards it trains on (with config).")
    split: str = option("train", help="Split of that dataset.")
    overrides: list[str] = option([], help="Training-config overrides, key.sub=value.")
    mix: list[str] = option(
        [], help="More datasets whose `split` shards are mixed into the training stream (drawn shard by shard)."
    )
    checkpoint: str | None = option(
        None, path="exists", help="A released checkpoint to evaluate without pretraining (instead of config)."
    )
    release: str | None = option(
        None,
        choices=_releases,
        help="A released checkpoint by name (esvit/resources/releases.yaml), downloaded by the download_release rule "
        "(instead of config or checkpoint; sets arch and checkpoint_format).",
    )
    checkpoint_format: Literal["official", "esvit", "timm"] = option(
        "official",
        help="official: microsoft/esvit checkpoint.pth (imported with `esvit import`); esvit: this project's; timm: "
        "a timm state dict (e.g. a supervised Swin).",
    )
    arch: str | None = option(None, choices=arch_names, help="Architecture of checkpoint (esvit.models.ARCHS).")
    image_size: int = option(224, gt=0, help="Evaluation crop size of checkpoint.")
    continual_from: ContinualFrom | None = option(
        None,
        help="Start from another run's checkpoint after `epoch` epochs (continual mode: how most released V+R models "
        "were made); that run is planned first and keeps that checkpoint.",
    )


@dataclasses.dataclass
class DownloadConfig:
    """Where downloads come from and are kept (released checkpoints, transfer datasets)."""

    mirror: str | None = option(
        None,
        help="A site mirror laid out as `wget -x` saves (<mirror>/<host>/<path>): an http(s):// or file:// URL, or a "
        "folder.",
    )
    cache: str | None = option(
        None,
        help="A shared download folder (<cache>/<host>/<path>): verified files there are linked instead of "
        "downloaded; new downloads land there.",
    )
    folder: str = option(
        "{data_dir}/downloads", help="Where downloaded checkpoints are written ({data_dir} is replaced)."
    )

    def path(self, data_dir: str) -> str:
        """The download folder with ``{data_dir}`` filled in."""
        return self.folder.replace("{data_dir}", data_dir.rstrip("/")).rstrip("/")

    def release_file(self, data_dir: str, release: str) -> str:
        """Where the download_release rule writes the released checkpoint ``release``."""
        return f"{self.path(data_dir)}/releases/{release}.pth"


@dataclasses.dataclass
class PipelineConfig:
    """The workflow config: what Snakemake and the CLI read."""

    data_dir: str = option("data", help="Where shards and prepared raw data are written.")
    launcher: Literal["local", "slurm"] = option(
        "local",
        help="How the pretrain_model rule runs `esvit pretrain`: local (here) or slurm (a submitit job it follows; "
        "cluster_profiles/slurm sets it).",
    )
    launch_site: str = option(
        "cluster_profiles/slurm/submitit.yaml",
        help="Site file of Slurm launch settings (partition, account, nodes, GPUs) used with launcher: slurm.",
    )
    datasets: dict[str, DatasetConfig] = option(
        {}, nonempty=True, help="Datasets to shard, by name (lower-case letters, digits and '_')."
    )
    shard: ShardConfig = option(factory=ShardConfig, help="The sharding stage.")
    runs: dict[str, PretrainRun] = option({}, help="Pretraining runs, by name (lower-case letters, digits and '_').")
    eval: EvalConfig = option(factory=EvalConfig, help="Evaluation of the runs.")
    download: DownloadConfig = option(factory=DownloadConfig, help="Downloads: site mirror and cache.")


def load_config(
    source: str | Path | Mapping, overrides: typing.Iterable[str] = (), check_paths: bool = True
) -> PipelineConfig:
    """Load and validate the workflow config.

    Args:
        source: a YAML path or an already-read mapping (Snakemake's ``config``).
        overrides: ``a.b=c`` strings applied before validation.
        check_paths: require data roots and checkpoints to exist. Snakemake plans with False: a plan is made
            before anything is downloaded, and a missing root fails its own shard job with the same message.

    Returns:
        The validated :class:`PipelineConfig`.
    """
    token = CHECK_PATHS.set(check_paths)
    try:
        return _load_config(source, overrides)
    finally:
        CHECK_PATHS.reset(token)


def missing_paths(cfg: PipelineConfig) -> list[str]:
    """Data roots and checkpoints a config names that do not exist (yet) and that no rule downloads: what a
    plan made with ``check_paths=False`` warns about."""
    out = []
    for name, ds in cfg.datasets.items():
        cls = SOURCES[ds.source]
        root = ds.root or cls.default_root
        if cls.needs_root and root and not ds.download and not Path(root).exists():
            out.append(f"datasets.{name}.root: {root!r} does not exist (its shard jobs will fail). {cls.missing_hint}")
    for name, run in cfg.runs.items():
        if run.checkpoint and not Path(run.checkpoint).exists():
            out.append(f"runs.{name}.checkpoint: {run.checkpoint!r} does not exist")
    return out


def _load_config(source: str | Path | Mapping, overrides: typing.Iterable[str]) -> PipelineConfig:
    data = load_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    data = apply_overrides(data, overrides)
    cfg = from_dict(PipelineConfig, data)
    for name, ds in cfg.datasets.items():
        SOURCES[ds.source].check_config(ds, f"datasets.{name}")
        entry = getattr(SOURCES[ds.source], "entry", None)  # a transfer set: its registry metric by default
        if entry and "metric" not in (data["datasets"][name] or {}):
            ds.metric = entry["metric"]
        if ds.download:
            if not (entry or {}).get("auto_download"):
                how = f"download: {entry['download']}" if entry else "put its files under root"
                raise ConfigError(
                    f"datasets.{name}.download: source {ds.source!r} cannot be downloaded automatically "
                    f"({how}); set download: false and put it under root by hand"
                )
    for i, name in (
        [(f"datasets[{i}]", n) for i, n in enumerate(cfg.eval.datasets)]
        + [(f"linear_datasets[{i}]", n) for i, n in enumerate(cfg.eval.linear_datasets)]
        + [("correspondence_dataset", n) for n in [cfg.eval.correspondence_dataset] if n is not None]
    ):
        if name not in cfg.datasets:
            raise ConfigError(
                f"eval.{i}: unknown dataset {name!r}; known: {', '.join(cfg.datasets)}."
                f"{did_you_mean(name, cfg.datasets)}"
            )
        splits = set(cfg.datasets[name].splits)
        if "train" not in splits or not splits & {"test", "val"}:
            raise ConfigError(
                f"eval.{i}: {name!r} needs a train and a test (or val) split (has {cfg.datasets[name].splits})"
            )
    for name, run in cfg.runs.items():
        key = f"runs.{name}"
        given = [k for k in ("config", "checkpoint", "release") if getattr(run, k) is not None]
        if len(given) != 1:
            found = f" (it has {' and '.join(given)})" if given else ""
            raise ConfigError(
                f"{key}: give one of config (+ dataset) to pretrain, checkpoint (+ arch) or release (a name "
                f"in esvit/resources/releases.yaml) to evaluate a released one{found}"
            )
        if run.release is not None:
            entry = load_releases()[run.release]
            given = data["runs"][name] or {}
            for field_, value in (("arch", entry["arch"]), ("checkpoint_format", entry["format"])):
                if field_ in given and given[field_] != value:
                    raise ConfigError(
                        f"{key}.{field_}: {given[field_]!r}, but release {run.release!r} is {value!r}; leave it out"
                    )
                setattr(run, field_, value)
            continue
        if run.checkpoint is not None:
            if run.arch is None:
                raise ConfigError(f"{key}.arch is required with checkpoint (e.g. swin_tiny_w7)")
            continue
        if run.dataset not in cfg.datasets:
            raise ConfigError(
                f"{key}.dataset: unknown dataset {run.dataset!r}; known: {', '.join(cfg.datasets)}."
                f"{did_you_mean(run.dataset, cfg.datasets)}"
            )
        if run.split not in cfg.datasets[run.dataset].splits:
            raise ConfigError(f"{key}.split: {run.split!r} is not among datasets.{run.dataset}.splits")
        for j, extra in enumerate(run.mix):
            if extra not in cfg.datasets:
                raise ConfigError(
                    f"{key}.mix[{j}]: unknown dataset {extra!r}; known: "
                    f"{', '.join(cfg.datasets)}.{did_you_mean(extra, cfg.datasets)}"
                )
            if run.split not in cfg.datasets[extra].splits:
                raise ConfigError(f"{key}.mix[{j}]: {extra!r} has no {run.split!r} split to mix in")
        try:
            load_train_config(run.config, run.overrides)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {run.config}: {exc}") from None
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.eval.device):
        raise ConfigError(f"eval.device must be auto, cpu, cuda or cuda:N (got {cfg.eval.device!r})")
    for name, run in cfg.runs.items():
        if run.continual_from is not None:
            _check_continual(cfg, name, run.continual_from)
    return cfg


def _check_continual(cfg: PipelineConfig, name: str, cont: ContinualFrom) -> None:
    key = f"runs.{name}.continual_from"
    base = cfg.runs.get(cont.run)
    if base is None or base.config is None or cont.run == name:
        pretrained = [n for n, r in cfg.runs.items() if r.config and n != name]
        raise ConfigError(
            f"{key}.run: {cont.run!r} is not another pretraining run of this config (pretraining runs: "
            f"{', '.join(pretrained) or 'none'}).{did_you_mean(cont.run, pretrained)}"
        )
    if cfg.runs[name].config is None:
        raise ConfigError(f"{key}: only a pretraining run (with config) can continue from another run")
    if base.continual_from is not None:
        raise ConfigError(f"{key}: {cont.run!r} is itself continual; chain from a run that starts from scratch")
    epochs = load_train_config(base.config, base.overrides).optim.epochs
    if cont.epoch > epochs:
        raise ConfigError(f"{key}.epoch {cont.epoch}: run {cont.run!r} trains only {epochs} epochs")


def pretrain_overrides(cfg: PipelineConfig, name: str) -> list[str]:
    """The training-config overrides the pretrain_model rule passes for run ``name``: the run's own, then the continual
    start (``run.continual_from`` = its base run's checkpoint) or, for a base run, the epochs to keep for the
    runs that continue from it."""
    run = cfg.runs[name]
    extra = []
    if run.continual_from is not None:
        extra.append(f"run.continual_from={continual_checkpoint(run.continual_from)}")
    keep = sorted(
        {r.continual_from.epoch for r in cfg.runs.values() if r.continual_from and r.continual_from.run == name}
    )
    if keep:
        extra.append(f"run.keep_epochs={keep}")
    return [*run.overrides, *extra]


def continual_checkpoint(cont: ContinualFrom) -> str:
    """Where the pretrain_model rule finds run ``cont.run``'s checkpoint after ``cont.epoch`` epochs."""
    return f"results/pretrain/{cont.run}/checkpoint{cont.epoch:04d}.pth"
