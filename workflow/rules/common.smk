# Config validation, the dataset lists, wildcard constraints and input functions.
import json
from pathlib import Path

from snakemake.utils import validate

from esvit.config import ConfigError, load_config
from esvit.train.config import load_train_config

# Friendly messages first (unknown key with did-you-mean, wrong type, missing path, unknown source), then the
# JSON schema, which also fills in defaults for keys left out.
try:
    CFG = load_config(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None
validate(config, schema="../schemas/config.schema.yaml")

DATA_DIR = CFG.data_dir.rstrip("/")
DATASETS = list(CFG.datasets)
SPLITS = sorted({s for ds in CFG.datasets.values() for s in ds.splits})
RUNS = list(CFG.runs)
# Evaluated models: each run's final teacher, and (optionally) the same architecture at random init.
EVAL_MODELS = {}
for _name, _run in CFG.runs.items():
    _train = load_train_config(_run.config, _run.overrides)
    _spec = {"arch": _train.model.arch, "image_size": _train.crops.global_size}
    EVAL_MODELS[_name] = {**_spec, "checkpoint": f"results/pretrain/{_name}/final.pth"}
    if CFG.eval.random_init_baseline:
        EVAL_MODELS[f"{_name}_random"] = {**_spec, "checkpoint": None}
EVAL_DATASETS = list(CFG.eval.datasets)


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    run="|".join(sorted(EVAL_MODELS, key=len, reverse=True)) or "no_runs",


SHARD_TARGETS = [
    f"{DATA_DIR}/shards/{name}/{split}/manifest.json"
    for name, ds in CFG.datasets.items()
    for split in ds.splits
]
PRETRAIN_TARGETS = [f"results/pretrain/{run}/final.pth" for run in RUNS]
EVAL_TARGETS = [
    f"results/{ev}/{model}/{dataset}/metrics.json"
    for ev in ("knn", "probe")
    for model in EVAL_MODELS
    for dataset in EVAL_DATASETS
]
ALL_TARGETS = SHARD_TARGETS + PRETRAIN_TARGETS + EVAL_TARGETS


def dataset_param(key):
    """A small, stable slice of one dataset's config, as the rule's params."""

    def get(wildcards):
        value = config["datasets"][wildcards.dataset].get(key)
        return json.dumps(value) if isinstance(value, (dict, list)) else value

    return get


def run_shards_manifest(wildcards):
    """The manifest of the shard set a pretraining run reads."""
    run = CFG.runs[wildcards.run]
    return f"{DATA_DIR}/shards/{run.dataset}/{run.split}/manifest.json"


def eval_model_inputs(wildcards):
    """What a feature extraction reads: the shard manifest, and the run's checkpoint unless random-init."""
    inputs = {"manifest": f"{DATA_DIR}/shards/{wildcards.dataset}/{wildcards.split}/manifest.json"}
    ckpt = EVAL_MODELS[wildcards.run]["checkpoint"]
    if ckpt:
        inputs["checkpoint"] = ckpt
    return inputs


def eval_model_args(wildcards):
    """`esvit extract` arguments naming the model: a checkpoint, or a random-init architecture."""
    spec = EVAL_MODELS[wildcards.run]
    if spec["checkpoint"]:
        return f"--checkpoint {spec['checkpoint']} --image-size {spec['image_size']}"
    return f"--random-init --arch {spec['arch']} --image-size {spec['image_size']}"
