# Config validation, the dataset lists, wildcard constraints and input functions.
import json
from pathlib import Path

from snakemake.utils import validate

from esvit.config import ConfigError, load_config

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


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    run="|".join(RUNS) or "no_runs",


SHARD_TARGETS = [
    f"{DATA_DIR}/shards/{name}/{split}/manifest.json"
    for name, ds in CFG.datasets.items()
    for split in ds.splits
]
PRETRAIN_TARGETS = [f"results/pretrain/{run}/final.pth" for run in RUNS]
ALL_TARGETS = SHARD_TARGETS + PRETRAIN_TARGETS


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
