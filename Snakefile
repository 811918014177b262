# EsViT pipeline: shard -> pretrain -> extract -> knn / probe -> report.
# No logic here: configuration, validation and the target lists live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/config.yaml"


include: "workflow/rules/common.smk"
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
