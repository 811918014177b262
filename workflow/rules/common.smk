# Config validation, the dataset lists, wildcard constraints and input functions.
import json
import sys
from pathlib import Path

from snakemake.utils import validate

from esvit.config import ConfigError, load_config, missing_paths, pretrain_overrides
from esvit.status import eval_models, eval_results, imported
from esvit.train.config import load_train_config, training_digest

# Friendly messages first (unknown key with did-you-mean, wrong type, missing path, unknown source), then the
# JSON schema, which also fills in defaults for keys left out.
# A plan needs no data: roots and checkpoints that do not exist yet (to be downloaded, or a set that is not
# there) are warned about here and fail their own jobs, so the other datasets go on (--keep-going).
try:
    CFG = load_config(config, check_paths=False)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None
validate(config, schema="../schemas/config.schema.yaml")
for _missing in missing_paths(CFG):
    print(f"esvit: warning: {_missing}", file=sys.stderr)

DATA_DIR = CFG.data_dir.rstrip("/")
DOWNLOAD_DIR = CFG.download.path(DATA_DIR)
DATASETS = list(CFG.datasets)
SPLITS = sorted({s for ds in CFG.datasets.values() for s in ds.splits})
RUNS = [name for name, run in CFG.runs.items() if run.config]  # pretrained here
# Released checkpoints converted to this project's format first: named releases (downloaded) and files given
# in the official or timm layout.
IMPORTS = [name for name, run in CFG.runs.items() if imported(run)]
# Evaluated models: each run's final teacher (or its released checkpoint), and the architecture at random
# initialisation ({run}_random, one per architecture and image size).
EVAL_MODELS = eval_models(CFG)
EVAL_DATASETS = list(CFG.eval.datasets)
LINEAR_DATASETS = list(CFG.eval.linear_datasets)


def eval_splits(dataset):
    """(train, val or None, test) split names of an evaluation dataset: test is `test`, else `val`; a val
    split next to a test split is the probe's validation split (else 20 % of train is held out)."""
    splits = CFG.datasets[dataset].splits
    test = "test" if "test" in splits else "val"
    return "train", ("val" if test == "test" and "val" in splits else None), test


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    run="|".join(sorted(EVAL_MODELS, key=len, reverse=True)) or "no_runs",
    release="|".join(sorted({run.release for run in CFG.runs.values() if run.release})) or "no_releases",


SHARD_TARGETS = [
    f"{DATA_DIR}/shards/{name}/{split}/manifest.json"
    for name, ds in CFG.datasets.items()
    for split in ds.splits
]
PRETRAIN_TARGETS = [f"results/pretrain/{run}/final.pth" for run in RUNS]
# k-NN and probe per (model, evaluation dataset; no k-NN for multi-label sets), the linear protocol per linear
# dataset: the same list `esvit status` checks.
EVAL_TARGETS = [f"results/{ev}/{model}/{dataset}/metrics.json" for model, ev, dataset in eval_results(CFG)]
# The correspondence diagnostic (esvit viz) of every evaluated model, on eval.correspondence_dataset's held-out images.
VIZ_DATASET = CFG.eval.correspondence_dataset or (EVAL_DATASETS + LINEAR_DATASETS + [None])[0]
VIZ_TARGETS = [f"results/viz/{model}/correspondence.json" for model in EVAL_MODELS] if VIZ_DATASET else []
ALL_TARGETS = SHARD_TARGETS + PRETRAIN_TARGETS + EVAL_TARGETS
# The run the report counts transfer wins against: a supervised release, as the paper counts them (else the
# report's default, a random initialisation).
_SUPERVISED = [n for n, r in CFG.runs.items() if r.release and r.checkpoint_format == "timm"]
REPORT_BASELINE = ["--baseline", _SUPERVISED[0]] if _SUPERVISED else []


def dataset_param(key):
    """A small, stable slice of one dataset's config, as the rule's params."""

    def get(wildcards):
        value = config["datasets"][wildcards.dataset].get(key)
        return json.dumps(value) if isinstance(value, (dict, list)) else value

    return get


def download_options():
    """The site mirror and cache of `esvit download`, as arguments."""
    options = []
    if CFG.download.mirror:
        options += ["--mirror", CFG.download.mirror]
    if CFG.download.cache:
        options += ["--cache", CFG.download.cache]
    return options


def dataset_download(wildcards):
    """A dataset with download: true is fetched (the download_dataset rule) before it is sharded."""
    if CFG.datasets[wildcards.dataset].download:
        return [f"{DOWNLOAD_DIR}/datasets/{wildcards.dataset}.json"]
    return []


def import_source(wildcards):
    """The file import_checkpoint converts: a named release (downloaded first) or the run's checkpoint."""
    run = CFG.runs[wildcards.run]
    return CFG.download.release_file(DATA_DIR, run.release) if run.release else run.checkpoint


def run_shards_manifest(wildcards):
    """The manifests of the shard sets a pretraining run reads (its dataset, then any mixed in)."""
    run = CFG.runs[wildcards.run]
    return [f"{DATA_DIR}/shards/{name}/{run.split}/manifest.json" for name in [run.dataset, *run.mix]]


def pretrain_inputs(wildcards):
    """What a pretraining run reads: its shard manifests and, in continual mode, the run it continues from
    (finished, so its checkpoint<epoch>.pth is there)."""
    run = CFG.runs[wildcards.run]
    inputs = {"manifest": run_shards_manifest(wildcards)}
    if run.continual_from is not None:
        inputs["base"] = f"results/pretrain/{run.continual_from.run}/done.json"
    return inputs


def training_config_digest(wildcards):
    """A hash of what decides a run's weights (its training config less the keys a resume may change): the
    pretrain rule reruns when it changes, and not for a changed rule text (rerun-triggers in the profiles)."""
    run = CFG.runs[wildcards.run]
    return training_digest(load_train_config(run.config, pretrain_overrides(CFG, wildcards.run)))


def pretrain_threads(wildcards):
    """Cores a local pretraining job takes from Snakemake's --cores: the run's run.threads (its torch threads; 2
    when not set), capped by Snakemake at --cores. The demo's runs set 1, so two train side by side on two cores
    (their one data-loader worker each mostly waits)."""
    run = CFG.runs[wildcards.run]
    train = load_train_config(run.config, pretrain_overrides(CFG, wildcards.run))
    return train.run.threads or 2


def pretrain_override_args(wildcards):
    """The run's training-config overrides (continual start and kept epochs included), quoted by the rule."""
    return pretrain_overrides(CFG, wildcards.run)


def eval_features(wildcards):
    """The cached features a k-NN / probe / linear job reads: train, test and (if any) val."""
    train, val, test = eval_splits(wildcards.dataset)
    base = f"results/features/{wildcards.run}/{wildcards.dataset}"
    return {"train": f"{base}/{train}.pt", "test": f"{base}/{test}.pt"} | ({"val": f"{base}/{val}.pt"} if val else {})


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
    size = ["--image-size", str(spec["image_size"])]
    if spec["checkpoint"]:
        return ["--checkpoint", spec["checkpoint"], *size]
    return ["--random-init", "--arch", spec["arch"], *size]
