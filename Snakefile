# EsViT pipeline: (download ->) shard -> pretrain -> extract -> knn / probe -> report.
# No logic here: workflow/rules/common.smk validates the config and wires the rules to the plan in esvit/status.py.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default applies only when no config file is given: `--configfile X` runs exactly what X names
# (Snakemake would otherwise merge X over the default, runs and datasets included).
if not workflow.overwrite_configfiles:

    configfile: "configs/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/shard.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        ALL_TARGETS,
        "results/report/report.html",
    default_target: True
