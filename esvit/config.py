"""Typed, strict configuration.

The workflow config (``configs/config.yaml``) is loaded into a tree of dataclasses. Loading is strict: an
unknown key (with a did-you-mean), a wrong type, a zero or negative count, a missing path or an unknown
source name raises :class:`ConfigError` with one message that names the key, the value and what is allowed.
Snakemake validates the same YAML against ``workflow/schemas/config.schema.yaml``; a unit test keeps the
two in step (same keys, same defaults).

Field constraints live in ``dataclasses.field(metadata=...)``:

- ``min`` / ``max``: inclusive bounds; ``gt``: exclusive lower bound (``gt=0`` = "positive");
- ``choices``: allowed values (a tuple), or a callable returning them (registries);
- ``path``: ``"exists"`` when the path must exist at load time;
- ``help``: the description (also the schema's description).
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from esvit.errors import ConfigError

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

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# False while a workflow is planned: paths that jobs will create or that only the jobs read (data roots,
# checkpoints still to be downloaded) are not required to exist yet (see load_config's check_paths).
CHECK_PATHS = contextvars.ContextVar("esvit_check_paths", default=True)




def _field(default: Any = dataclasses.MISSING, *, factory: Any = None, help: str, **meta: Any) -> Any:
    meta["help"] = help
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _source_names() -> tuple[str, ...]:
    from esvit.data.sources import SOURCES  # lazy: keeps `import esvit.config` light

    return tuple(sorted(SOURCES))


def _releases() -> tuple[str, ...]:
    from esvit.download import load_releases  # plain YAML

    return tuple(load_releases())


def _archs() -> tuple[str, ...]:
    from esvit.archs import ARCHS  # plain data: validating a config imports no torch

    return tuple(ARCHS)


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """The sharding stage (``esvit shard``), and the settings the shard writer takes (``ShardSettings``)."""

    max_samples: int = _field(10000, gt=0, help="Samples per shard at most.")
    max_mb: float = _field(1024.0, gt=0, help="Megabytes (1e6 bytes) per shard at most, tar bytes.")
    workers: int = _field(2, gt=0, help="Worker processes that write shards.")
    seed: int = _field(0, min=0, help="Seed of the global shuffle; same input and seed give identical shards.")
    max_bad_fraction: float = _field(
        0.001, min=0, max=1, help="Fail when more than this fraction of images is unreadable."
    )
    check: Literal["header", "decode", "none"] = _field(
        "header",
        help="Image check: header (parse header and end marker, fast), decode (full decode), none.",
    )

    @property
    def max_bytes(self) -> int:
        """``max_mb`` in bytes: the tar size a shard stays within."""
        return int(self.max_mb * 1e6)


@dataclasses.dataclass
class DatasetConfig:
    """One dataset to shard."""

    source: str = _field(choices=_source_names, help="Registered data source (`esvit sources` lists them).")
    root: str | None = _field(None, help="Raw files of the source; null for packaged data or the default.")
    splits: list[str] = _field(["train", "test"], nonempty=True, help="Splits to shard.")
    options: dict[str, Any] = _field({}, help="Source-specific options (see `esvit sources`).")
    metric: Literal["accuracy", "mean_per_class", "11point_mAP"] = _field(
        "accuracy", help="Metric of its linear probe (docs/datasets.md: accuracy, mean_per_class, 11point_mAP); transfer sets default to the registry's."
    )
    download: bool = _field(False, help="Fetch it into root first (the download_dataset rule: torchvision's URLs and checksums; transfer sets with auto_download in configs/datasets.yaml).")


@dataclasses.dataclass
class ContinualFrom:
    """A run's starting point in continual mode: ``run``'s checkpoint after ``epoch`` epochs."""

    run: str = _field(help="The (view-only) run to continue from, a key of `runs` with a config.")
    epoch: int = _field(gt=0, help="Epochs of that run to start from (checkpoint<epoch>.pth; the paper: 200, or 180 for Swin-S/W14).")


@dataclasses.dataclass
class PretrainRun:
    """One run to evaluate: a pretraining (a training config, a diff on the paper defaults, and the data it
    reads), or a released checkpoint evaluated as it is (``checkpoint`` + ``arch``, no pretraining)."""

    config: str | None = _field(None, path="exists", help="Training config YAML (configs/pretrain/*.yaml, configs/paper/*.yaml); or give checkpoint.")
    dataset: str | None = _field(None, help="Dataset (a key of `datasets`) whose shards it trains on (with config).")
    split: str = _field("train", help="Split of that dataset.")
    overrides: list[str] = _field([], help="Training-config overrides, key.sub=value.")
    mix: list[str] = _field([], help="More datasets whose `split` shards are mixed into the training stream (drawn shard by shard).")
    checkpoint: str | None = _field(None, path="exists", help="A released checkpoint to evaluate without pretraining (instead of config).")
    release: str | None = _field(None, choices=_releases, help="A released checkpoint by name (configs/releases.yaml), downloaded by the download_release rule (instead of config or checkpoint; sets arch and checkpoint_format).")
    checkpoint_format: Literal["official", "esvit", "timm"] = _field("official", help="official: microsoft/esvit checkpoint.pth (imported with `esvit import`); esvit: this project's; timm: a timm state dict (e.g. a supervised Swin).")
    arch: str | None = _field(None, choices=_archs, help="Architecture of checkpoint (esvit.models.ARCHS).")
    image_size: int = _field(224, gt=0, help="Evaluation crop size of checkpoint.")
    continual_from: ContinualFrom | None = _field(
        None, help="Start from another run's checkpoint after `epoch` epochs (continual mode: how most released V+R models were made); that run is planned first and keeps that checkpoint."
    )


@dataclasses.dataclass
class EvalConfig:
    """Evaluation of every run on held-out datasets: cached features, k-NN and the linear probe."""

    datasets: list[str] = _field([], help="Datasets (keys of `datasets`, with train and test splits) to evaluate on.")
    random_init_baseline: bool = _field(True, help="Also evaluate the runs' architectures at random initialisation ({run}_random, once per architecture and image size).")
    batch_size: int = _field(256, gt=0, help="Images per extraction batch.")
    workers: int = _field(2, min=0, help="Data-loader workers per extraction job.")
    device: str = _field("auto", help="Device of extraction, probes and the linear protocol: auto (the GPU when the job sees one), cpu, cuda or cuda:N.")
    knn_ks: list[int] = _field([10, 20, 100, 200], nonempty=True, help="k values of the k-NN (k=20 is reported).")
    knn_temperature: float = _field(0.07, gt=0, help="Temperature of the k-NN vote weights.")
    linear_datasets: list[str] = _field([], help="Datasets (keys of `datasets`) for the ImageNet linear protocol on the last-4-blocks features, and its k-NN.")
    linear_mode: Literal["fast", "paper"] = _field("fast", help="fast: cached centre-crop features; paper: augmented views through the frozen backbone.")
    linear_epochs: int = _field(100, gt=0, help="Epochs of the linear protocol (paper: 100).")
    linear_lr: float = _field(1e-3, gt=0, help="Base learning rate of the linear protocol, scaled by batch / 256.")
    linear_batch_size: int = _field(256, gt=0, help="Batch size of the linear protocol.")
    correspondence_dataset: str | None = _field(
        None, help="Dataset (a key of `datasets`) whose held-out images the region correspondence diagnostic (esvit viz) "
        "uses; null: the first of datasets, else of linear_datasets."
    )


@dataclasses.dataclass
class DownloadConfig:
    """Where downloads come from and are kept (released checkpoints, transfer datasets)."""

    mirror: str | None = _field(None, help="A site mirror laid out as `wget -x` saves (<mirror>/<host>/<path>): an http(s):// or file:// URL, or a folder.")
    cache: str | None = _field(None, help="A shared download folder (<cache>/<host>/<path>): verified files there are linked instead of downloaded; new downloads land there.")
    folder: str = _field("{data_dir}/downloads", help="Where downloaded checkpoints are written ({data_dir} is replaced).")

    def path(self, data_dir: str) -> str:
        """The download folder with ``{data_dir}`` filled in."""
        return self.folder.replace("{data_dir}", data_dir.rstrip("/")).rstrip("/")

    def release_file(self, data_dir: str, release: str) -> str:
        """Where the download_release rule writes the released checkpoint ``release``."""
        return f"{self.path(data_dir)}/releases/{release}.pth"


@dataclasses.dataclass
class PipelineConfig:
    """The workflow config: what Snakemake and the CLI read."""

    data_dir: str = _field("data", help="Where shards and prepared raw data are written.")
    launcher: Literal["local", "slurm"] = _field("local", help="How the pretrain rule runs `esvit pretrain`: local (here) or slurm (a submitit job it follows; cluster_profiles/slurm sets it).")
    launch_site: str = _field("cluster_profiles/slurm/submitit.yaml", help="Site file of Slurm launch settings (partition, account, nodes, GPUs) used with launcher: slurm.")
    datasets: dict[str, DatasetConfig] = _field({}, nonempty=True, help="Datasets to shard, by name (lower-case letters, digits and '_').")
    shard: ShardConfig = _field(factory=ShardConfig, help="The sharding stage.")
    runs: dict[str, PretrainRun] = _field({}, help="Pretraining runs, by name (lower-case letters, digits and '_').")
    eval: EvalConfig = _field(factory=EvalConfig, help="Evaluation of the runs.")
    download: DownloadConfig = _field(factory=DownloadConfig, help="Downloads: site mirror and cache.")


# ----------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key} must be {_type_name(tp)} (got {value!r})"
        )
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(map(repr, allowed))} (got {value!r}).{_did_you_mean(value, map(str, allowed))}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)} (got {type(value).__name__} {value!r})")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping (got {type(value).__name__} {value!r})")
        _, item = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if dataclasses.is_dataclass(item) and not (isinstance(k, str) and NAME_RE.match(k)):
                raise ConfigError(
                    f"{key}: name {k!r} must be lower-case letters, digits and '_' and start with a letter"
                )
            out[k] = _convert(v, item, f"{key}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number (got {type(value).__name__} {value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer (got {type(value).__name__} {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false (got {type(value).__name__} {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string (got {type(value).__name__} {value!r})")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not in the config


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{key} must be > {meta['gt']} (got {value!r})")
    if "min" in meta and not value >= meta["min"]:
        raise ConfigError(f"{key} must be >= {meta['min']} (got {value!r})")
    if "max" in meta and not value <= meta["max"]:
        raise ConfigError(f"{key} must be <= {meta['max']} (got {value!r})")
    if meta.get("nonempty") and len(value) == 0:
        raise ConfigError(f"{key} must not be empty")
    if "choices" in meta and value is not None:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if value not in choices:
            raise ConfigError(
                f"{key}: unknown name {value!r}; known: {', '.join(choices)}.{_did_you_mean(value, choices)}"
            )
    if meta.get("path") == "exists" and value is not None and CHECK_PATHS.get() and not Path(value).exists():
        raise ConfigError(f"{key}: path {value!r} does not exist; create it or point {key} at the right place")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass type from this module (or any dataclass whose fields use the same metadata).
        data: the mapping read from YAML (``None`` means all defaults).
        prefix: dotted key of ``data`` inside the whole config, for messages.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: naming the first bad key.
    """
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values (got {type(data).__name__} {data!r})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise ConfigError(
                f"{where}: unknown key {k!r}.{_did_you_mean(k, fields)} Allowed: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore
                raise ConfigError(f"{where}: missing required key {name!r} ({f.metadata.get('help', '')})")
            continue
        value = _convert(data[name], hints[name], key)
        _check_meta(value, f.metadata, key)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """The plain-YAML form of a config object (inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with a clear error for a missing file or a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top (got {type(data).__name__})")
    return data


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(source: str | Path | Mapping, overrides: typing.Iterable[str] = (), check_paths: bool = True) -> PipelineConfig:
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
    from esvit.data.sources import SOURCES

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
    from esvit.data.sources import SOURCES

    for name, ds in cfg.datasets.items():
        SOURCES[ds.source].check_config(ds, f"datasets.{name}")
        entry = getattr(SOURCES[ds.source], "entry", None)  # a transfer set: its registry metric by default
        if entry and "metric" not in (data["datasets"][name] or {}):
            ds.metric = entry["metric"]
        if ds.download:
            if not (entry or {}).get("auto_download"):
                how = f"download: {entry['download']}" if entry else "put its files under root"
                raise ConfigError(f"datasets.{name}.download: source {ds.source!r} cannot be downloaded automatically "
                                  f"({how}); set download: false and put it under root by hand")  # fmt: skip
    for i, name in [(f"datasets[{i}]", n) for i, n in enumerate(cfg.eval.datasets)] + [
            (f"linear_datasets[{i}]", n) for i, n in enumerate(cfg.eval.linear_datasets)] + [
            ("correspondence_dataset", n) for n in [cfg.eval.correspondence_dataset] if n is not None]:  # fmt: skip
        if name not in cfg.datasets:
            raise ConfigError(
                f"eval.{i}: unknown dataset {name!r}; known: {', '.join(cfg.datasets)}."
                f"{_did_you_mean(name, cfg.datasets)}"
            )
        splits = set(cfg.datasets[name].splits)
        if "train" not in splits or not splits & {"test", "val"}:
            raise ConfigError(f"eval.{i}: {name!r} needs a train and a test (or val) split (has {cfg.datasets[name].splits})")
    for name, run in cfg.runs.items():
        key = f"runs.{name}"
        given = [k for k in ("config", "checkpoint", "release") if getattr(run, k) is not None]
        if len(given) != 1:
            found = f" (it has {' and '.join(given)})" if given else ""
            raise ConfigError(f"{key}: give one of config (+ dataset) to pretrain, checkpoint (+ arch) or release (a name "
                              f"in configs/releases.yaml) to evaluate a released one{found}")  # fmt: skip
        if run.release is not None:
            from esvit.download import load_releases

            entry = load_releases()[run.release]
            given = data["runs"][name] or {}
            for field_, value in (("arch", entry["arch"]), ("checkpoint_format", entry["format"])):
                if field_ in given and given[field_] != value:
                    raise ConfigError(f"{key}.{field_}: {given[field_]!r}, but release {run.release!r} is {value!r}; leave it out")
                setattr(run, field_, value)
            continue
        if run.checkpoint is not None:
            if run.arch is None:
                raise ConfigError(f"{key}.arch is required with checkpoint (e.g. swin_tiny_w7)")
            continue
        if run.dataset not in cfg.datasets:
            raise ConfigError(
                f"{key}.dataset: unknown dataset {run.dataset!r}; known: {', '.join(cfg.datasets)}."
                f"{_did_you_mean(run.dataset, cfg.datasets)}"
            )
        if run.split not in cfg.datasets[run.dataset].splits:
            raise ConfigError(f"{key}.split: {run.split!r} is not among datasets.{run.dataset}.splits")
        for j, extra in enumerate(run.mix):
            if extra not in cfg.datasets:
                raise ConfigError(f"{key}.mix[{j}]: unknown dataset {extra!r}; known: {', '.join(cfg.datasets)}.{_did_you_mean(extra, cfg.datasets)}")
            if run.split not in cfg.datasets[extra].splits:
                raise ConfigError(f"{key}.mix[{j}]: {extra!r} has no {run.split!r} split to mix in")
        from esvit.train.config import load_train_config

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
            f"{', '.join(pretrained) or 'none'}).{_did_you_mean(cont.run, pretrained)}"
        )
    if cfg.runs[name].config is None:
        raise ConfigError(f"{key}: only a pretraining run (with config) can continue from another run")
    if base.continual_from is not None:
        raise ConfigError(f"{key}: {cont.run!r} is itself continual; chain from a run that starts from scratch")
    from esvit.train.config import load_train_config

    epochs = load_train_config(base.config, base.overrides).optim.epochs
    if cont.epoch > epochs:
        raise ConfigError(f"{key}.epoch {cont.epoch}: run {cont.run!r} trains only {epochs} epochs")


def pretrain_overrides(cfg: PipelineConfig, name: str) -> list[str]:
    """The training-config overrides the pretrain rule passes for run ``name``: the run's own, then the continual
    start (``run.continual_from`` = its base run's checkpoint) or, for a base run, the epochs to keep for the
    runs that continue from it."""
    run = cfg.runs[name]
    extra = []
    if run.continual_from is not None:
        extra.append(f"run.continual_from={continual_checkpoint(run.continual_from)}")
    keep = sorted({r.continual_from.epoch for r in cfg.runs.values() if r.continual_from and r.continual_from.run == name})
    if keep:
        extra.append(f"run.keep_epochs={keep}")
    return [*run.overrides, *extra]


def continual_checkpoint(cont: ContinualFrom) -> str:
    """Where the pretrain rule finds run ``cont.run``'s checkpoint after ``cont.epoch`` epochs."""
    return f"results/pretrain/{cont.run}/checkpoint{cont.epoch:04d}.pth"
