# Config validation, then wiring: wildcard constraints and input functions over the plan of esvit/status.py.
import json
import sys
from pathlib import Path

from snakemake.utils import validate

from esvit.config import load_config, missing_paths, pretrain_overrides
from esvit.errors import ConfigError
import esvit.status as plan
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
# Evaluated models: each run's final teacher (or its released checkpoint), and the architecture at random
# initialisation ({run}_random, one per architecture and image size).
EVAL_MODELS = plan.eval_models(CFG)


wildcard_constraints:
    dataset=plan.wildcard_regex(CFG.datasets),
    split=plan.wildcard_regex(plan.split_names(CFG)),
    run=plan.wildcard_regex(EVAL_MODELS, "no_runs"),
    release=plan.wildcard_regex(plan.release_names(CFG), "no_releases"),


# Shard sets, pretrained runs, and per (model, evaluation dataset) the k-NN (not for multi-label sets) and the
# probe, per linear dataset the linear protocol: the same list `esvit status` checks.
EVAL_TARGETS = plan.eval_targets(CFG, list(EVAL_MODELS))
ALL_TARGETS = plan.shard_targets(CFG) + plan.pretrain_targets(CFG) + EVAL_TARGETS
# The run the report counts transfer wins against: a supervised release, as the paper counts them (else the
# report's default, a random initialisation).
REPORT_BASELINE = plan.report_args(CFG)


def dataset_param(key):
    """One field of the job's dataset config, as a rule's params (mappings and lists as JSON)."""

    def get(wildcards):
        value = getattr(CFG.datasets[wildcards.dataset], key)
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


def pretrain_inputs(wildcards):
    """What a pretraining run reads: its shard manifests and, in continual mode, the run it continues from."""
    return plan.pretrain_inputs(CFG, wildcards.run)


def training_config_digest(wildcards):
    """A hash of what decides a run's weights (its training config less the keys a resume may change): the
    pretrain_model rule reruns when it changes, and not for a changed rule text (rerun-triggers in the profiles)."""
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
    return plan.eval_feature_files(CFG, wildcards.run, wildcards.dataset)


def eval_checkpoint(wildcards):
    """The evaluated model's checkpoint ({} at random init): what extraction and the diagnostic read."""
    return plan.checkpoint_inputs(EVAL_MODELS, wildcards.run)


def eval_model_inputs(wildcards):
    """What a feature extraction reads: the shard manifest, and the model's checkpoint unless random-init."""
    manifest = plan.shard_manifest(CFG, wildcards.dataset, wildcards.split)
    return {"manifest": manifest, **eval_checkpoint(wildcards)}


def eval_model_args(wildcards):
    """`esvit extract` arguments naming the model (a checkpoint, or a random-init architecture) and its size."""
    return plan.extract_args(EVAL_MODELS, wildcards.run)


def viz_model_args(wildcards):
    """`esvit viz` arguments naming the model: a checkpoint, or a random-init architecture."""
    return plan.model_args(EVAL_MODELS, wildcards.run)
