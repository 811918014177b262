"""Config loading: the default loads; bad configs get one clear message; schema and dataclasses agree."""

from __future__ import annotations

import copy
import dataclasses
import typing

import jsonschema
import pytest
import yaml

from esvit.config import (
    ConfigError,
    DatasetConfig,
    DownloadConfig,
    EvalConfig,
    PipelineConfig,
    PretrainRun,
    ShardConfig,
    load_config,
)
from tests.conftest import REPO, run_cli

DEFAULT = yaml.safe_load((REPO / "configs/config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def packaged_only() -> dict:
    """The default config without the dataset that needs a Debian package (so these tests run anywhere)."""
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"].pop("fashion_mnist")
    for run in cfg["runs"].values():
        run["dataset"] = "mnist5k"
    cfg["eval"]["datasets"] = [d for d in cfg["eval"]["datasets"] if d != "fashion_mnist"]
    cfg["eval"].pop("correspondence_dataset", None)
    return cfg


def test_default_config_loads():
    cfg = load_config(packaged_only())
    assert isinstance(cfg, PipelineConfig)
    assert set(cfg.datasets) == set(DEFAULT["datasets"]) - {"fashion_mnist"}
    assert cfg.shard.max_samples == DEFAULT["shard"]["max_samples"]
    jsonschema.validate(DEFAULT, SCHEMA)


def test_overrides_apply_and_are_validated():
    cfg = load_config(packaged_only(), ["shard.workers=3", "shard.check=decode"])
    assert cfg.shard.workers == 3 and cfg.shard.check == "decode"
    with pytest.raises(ConfigError, match="shard.workers must be > 0"):
        load_config(packaged_only(), ["shard.workers=0"])


def _set(path: str, value):
    def mutate(cfg: dict) -> None:
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value

    return mutate


def _pop(path: str):
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node.pop(last)

    return mutate


# (id, mutation, substrings the message must contain, the JSON schema rejects it too)
BAD = [
    (
        "correspondence-unknown-dataset",
        _set("eval.correspondence_dataset", "digit"),
        ["eval.correspondence_dataset: unknown dataset 'digit'", "Did you mean 'digits'"],
        False,
    ),
    (
        "mix-unknown-dataset",
        _set("runs.esvit_demo.mix", ["mnist6k"]),
        ["runs.esvit_demo.mix[0]: unknown dataset 'mnist6k'", "Did you mean 'mnist5k'"],
        False,
    ),
    (
        "run-without-config-or-checkpoint",
        _set("runs.esvit_demo.config", None),
        ["runs.esvit_demo: give one of config"],
        False,
    ),
    (
        "checkpoint-without-arch",
        _set("runs.esvit_demo", {"checkpoint": "configs/config.yaml"}),
        ["runs.esvit_demo.arch is required"],
        False,
    ),
    ("unknown-top-key", _set("datasetz", {}), ["unknown key 'datasetz'", "Did you mean 'datasets'"], True),
    (
        "unknown-nested-key",
        _set("shard.max_sample", 5),
        ["shard: unknown key 'max_sample'", "Did you mean 'max_samples'"],
        True,
    ),
    ("int-as-string", _set("shard.workers", "two"), ["shard.workers must be an integer", "'two'"], True),
    ("number-as-string", _set("shard.max_mb", "big"), ["shard.max_mb must be a number"], True),
    ("bool-as-int", _set("shard.seed", True), ["shard.seed must be an integer"], True),
    ("zero-count", _set("shard.max_samples", 0), ["shard.max_samples must be > 0", "got 0"], True),
    ("negative-count", _set("shard.workers", -1), ["shard.workers must be > 0", "got -1"], True),
    ("fraction-above-one", _set("shard.max_bad_fraction", 1.5), ["shard.max_bad_fraction must be <= 1"], True),
    ("unknown-enum", _set("shard.check", "full"), ["shard.check must be one of", "'header'"], True),
    (
        "unknown-source",
        _set("datasets.digits.source", "digitz"),
        ["datasets.digits.source: unknown name 'digitz'", "Did you mean 'digits'"],
        True,
    ),
    (
        "missing-path",
        _set("datasets.imagenet", {"source": "image_folder", "root": "/no/such/imagenet"}),
        ["datasets.imagenet.root", "'/no/such/imagenet' does not exist"],
        False,
    ),
    (
        "missing-required",
        _set("datasets.imagenet", {"root": "/tmp"}),
        ["datasets.imagenet: missing required key 'source'"],
        True,
    ),
    (
        "splits-not-a-list",
        _set("datasets.digits.splits", "train"),
        ["datasets.digits.splits must be a list of str"],
        True,
    ),
    ("empty-splits", _set("datasets.digits.splits", []), ["datasets.digits.splits must not be empty"], True),
    ("bad-dataset-name", _set("datasets.Digits-2", {"source": "digits"}), ["name 'Digits-2' must be lower-case"], True),
    (
        "unknown-split",
        _set("datasets.digits.splits", ["train", "val"]),
        ["unknown split 'val' for source 'digits'", "Allowed: train, test"],
        False,
    ),
    (
        "unknown-option",
        _set("datasets.digits.options", {"test_frac": 0.3}),
        ["unknown option 'test_frac'", "Did you mean 'test_fraction'"],
        False,
    ),
    ("no-datasets", _set("datasets", {}), ["datasets must not be empty"], True),
    ("section-not-a-mapping", _set("shard", [1, 2]), ["shard must be a mapping"], True),
    (
        "torchvision-unknown-class",
        _set(
            "datasets.cifar",
            {
                "source": "torchvision",
                "root": "/tmp",
                "splits": ["train"],
                "options": {"class": "CIFAR11", "splits": {"train": {"train": True}}},
            },
        ),
        ["unknown torchvision dataset 'CIFAR11'", "Did you mean 'CIFAR10'"],
        False,
    ),
    (
        "missing-required-root",
        _pop("datasets.mnist5k.source"),
        ["datasets.mnist5k: missing required key 'source'"],
        True,
    ),
    (
        "run-unknown-dataset",
        _set("runs.esvit_demo.dataset", "mnist5"),
        ["runs.esvit_demo.dataset: unknown dataset 'mnist5'", "Did you mean 'mnist5k'"],
        False,
    ),
    (
        "run-missing-config-file",
        _set("runs.esvit_demo.config", "configs/pretrain/nope.yaml"),
        ["runs.esvit_demo.config: path 'configs/pretrain/nope.yaml' does not exist"],
        False,
    ),
    (
        "run-unknown-model",
        _set("runs.esvit_demo.overrides", ["model.arch=swin_tiny_w8"]),
        ["model.arch: unknown name 'swin_tiny_w8'", "Did you mean 'swin_tiny_w7'"],
        False,
    ),
    (
        "run-bad-training-key",
        _set("runs.esvit_demo.overrides", ["optim.lr=-1"]),
        ["runs.esvit_demo", "optim.lr must be > 0"],
        False,
    ),
    (
        "eval-unknown-dataset",
        _set("eval.datasets", ["digits", "mnist"]),
        ["eval.datasets[1]: unknown dataset 'mnist'", "Did you mean 'mnist5k'"],
        False,
    ),
    ("eval-bad-metric", _set("datasets.digits.metric", "top1"), ["datasets.digits.metric must be one of"], True),
    (
        "unknown-release",
        _set("runs.esvit_demo", {"release": "swin_tiny_w7_rv"}),
        ["runs.esvit_demo.release: unknown name 'swin_tiny_w7_rv'", "Did you mean 'swin_tiny_w7_v"],
        True,
    ),
    (
        "release-and-config",
        _set("runs.esvit_demo.release", "swin_tiny_w7_vr"),
        ["runs.esvit_demo: give one of config"],
        False,
    ),
    (
        "release-other-arch",
        _set("runs.esvit_demo", {"release": "swin_tiny_w7_vr", "arch": "swin_small_w7"}),
        ["runs.esvit_demo.arch: 'swin_small_w7', but release 'swin_tiny_w7_vr' is 'swin_tiny_w7'"],
        False,
    ),
    (
        "download-by-hand-only",
        _set("datasets.cars", {"source": "stanford_cars", "root": "/tmp/cars", "download": True}),
        ["datasets.cars.download: source 'stanford_cars' cannot be downloaded automatically", "by hand"],
        False,
    ),
    (
        "download-without-root",
        _set("datasets.c10", {"source": "cifar10", "download": True}),
        ["datasets.c10.root is required for source 'cifar10'", "set download: true on the dataset to fetch it there"],
        False,
    ),
    (
        "run-bad-crops",
        _set("runs.esvit_demo.overrides", ["crops.local_size=[96, 64]"]),
        ["crops.local_number [4] and crops.local_size [96, 64] must have equal lengths"],
        False,
    ),
]


@pytest.mark.parametrize("name,mutate,expected,schema_rejects", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_rejected_with_a_clear_message(name, mutate, expected, schema_rejects):
    cfg = packaged_only()
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message  # one line
    if schema_rejects:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(cfg, SCHEMA)


@pytest.mark.parametrize(
    "text,expected",
    [("shard: [1, 2\n", "is not valid YAML"), ("- a\n- b\n", "must hold a mapping"), ("", "is empty")],
    ids=["yaml-syntax", "top-level-list", "empty-file"],
)
def test_bad_config_files(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    proc = run_cli("shard", "--config", str(path), "--dataset", "digits")
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_missing_config_file_names_it(tmp_path):
    proc = run_cli("shard", "--config", str(tmp_path / "nope.yaml"), "--dataset", "digits")
    assert proc.returncode == 2 and "nope.yaml' does not exist" in proc.stderr


def _schema_for(cls) -> dict:
    props = SCHEMA["properties"]
    if cls is ShardConfig:
        return props["shard"]["properties"]
    if cls is DatasetConfig:
        return props["datasets"]["additionalProperties"]["properties"]
    if cls is PretrainRun:
        return props["runs"]["additionalProperties"]["properties"]
    if cls is EvalConfig:
        return props["eval"]["properties"]
    if cls is DownloadConfig:
        return props["download"]["properties"]
    return props


@pytest.mark.parametrize("cls", [PipelineConfig, ShardConfig, DatasetConfig, PretrainRun, EvalConfig, DownloadConfig])
def test_schema_and_dataclasses_agree(cls):
    """Same keys, a description for each, and the same defaults (dataclass defaults vs schema defaults)."""
    schema = _schema_for(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(schema) == set(fields)
    for name, f in fields.items():
        assert schema[name].get("description"), f"{cls.__name__}.{name} has no description in the schema"
        assert schema[name]["description"] == f.metadata["help"]
        if f.default is not dataclasses.MISSING:
            assert schema[name]["default"] == f.default, name
        elif f.default_factory is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default_factory):
            assert schema[name]["default"] == f.default_factory(), name
        if "choices" in f.metadata:  # registry names appear as the schema's enum
            choices = f.metadata["choices"]() if callable(f.metadata["choices"]) else f.metadata["choices"]
            assert sorted(v for v in schema[name]["enum"] if v is not None) == sorted(choices)
        hint = typing.get_type_hints(cls)[name]
        if typing.get_origin(hint) is typing.Literal:
            assert sorted(schema[name]["enum"]) == sorted(typing.get_args(hint))


def test_validating_configs_imports_no_torch():
    """Snakemake validates every config (and every run's training config) each time it plans: that must not pay
    for importing torch / timm / torchvision (seconds per plan). Architecture names come from plain data."""
    import subprocess
    import sys

    from tests.conftest import REPO, env_with_python

    code = (
        "import sys, yaml\n"
        "from esvit.config import load_config\n"
        "from esvit.train.config import load_train_config, training_digest\n"
        "load_config(yaml.safe_load(open('configs/config.yaml')))\n"
        "cfg = load_train_config('configs/paper/swin_base_w14.yaml', ['model.arch=swin_tiny_w7'])\n"
        "training_digest(cfg)\n"
        "try:\n"
        "    load_train_config(None, ['model.arch=swin_tiny_w77'])\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env_with_python(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "swin_tiny_w7" in proc.stdout.splitlines()[0]  # the unknown name is refused, naming the known ones
    assert proc.stdout.splitlines()[-1] == "[]"


def test_the_plain_architecture_table_is_what_the_models_build():
    from esvit.archs import ARCHS
    from esvit.models.backbones import ARCHS as BUILT

    assert ARCHS is BUILT and {"swin_tiny_w7", "swin_base_w14", "vit_small", "resnet50"} <= set(ARCHS)


def test_cli_options_and_library_defaults_read_the_config_defaults():
    """A setting the workflow config and a CLI option (or a library function) share has one default, the config
    dataclass field's: a command typed by hand runs as the rule does (extraction batch 256, k-NN T = 0.07, ...)."""
    import inspect

    from esvit.cli import build_parser
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.eval import features, knn, linear

    ev = EvalConfig()
    parse = build_parser().parse_args
    metrics = ["--train", "t", "--test", "t", "--out", "o", "--run", "r", "--dataset", "d"]
    extract = parse(["extract", "--shards", "s", "--out", "o"])
    assert (extract.batch_size, extract.workers, extract.device) == (ev.batch_size, ev.workers, ev.device)
    assert ev.batch_size == 256 and ev.knn_temperature == 0.07
    knn_args = parse(["knn", *metrics])
    assert list(knn_args.ks) == ev.knn_ks and knn_args.temperature == ev.knn_temperature
    lin = parse(["linear", *metrics])
    got = (lin.mode, lin.epochs, lin.batch_size, lin.lr, lin.workers, lin.device)
    assert got == (ev.linear_mode, ev.linear_epochs, ev.linear_batch_size, ev.linear_lr, ev.workers, ev.device)
    assert parse(["probe", *metrics]).metric == DatasetConfig.metric
    assert parse(["shard", "--dataset", "d"]).data_dir == PipelineConfig.data_dir
    assert list(knn.KS) == ev.knn_ks and knn.TEMPERATURE == ev.knn_temperature
    assert inspect.signature(knn.knn_classify).parameters["temperature"].default == ev.knn_temperature
    ext = inspect.signature(features.extract).parameters
    assert (ext["batch_size"].default, ext["num_workers"].default) == (ev.batch_size, ev.workers)
    paper = inspect.signature(linear.linear_paper).parameters
    got = [paper[k].default for k in ("epochs", "batch_size", "base_lr", "num_workers")]
    assert got == [ev.linear_epochs, ev.linear_batch_size, ev.linear_lr, ev.workers]
    # the shard writer's settings are the config's `shard` block: one type, one set of defaults
    assert ShardConfig is ShardConfig
    assert inspect.signature(write_shards).parameters["settings"].default == ShardConfig()
    assert ShardConfig(max_mb=0.5).max_bytes == 500_000
