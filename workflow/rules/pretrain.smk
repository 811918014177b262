# Self-supervised pretraining, one job per run. A local rule that runs `esvit pretrain`: with `launcher: local`
# (the default) here; with `launcher: slurm` (cluster_profiles/slurm sets it) it submits a multi-node submitit
# job with the site file's settings - or re-attaches to the run's job that is still queued or running - streams
# rank 0's log into the rule's log, and fails with the job's own error. Only the final artefacts are outputs:
# Snakemake deletes outputs before a job runs, and the resume state (checkpoint.pth) must survive.


rule pretrain_model:
    input:
        unpack(pretrain_inputs),
    output:
        final=ensure("results/pretrain/{run}/final.pth", non_empty=True),
        done="results/pretrain/{run}/done.json",
    log:
        "results/logs/pretrain/{run}.log",
    benchmark:
        "results/benchmarks/pretrain/{run}.tsv"
    params:
        config=lambda w: CFG.runs[w.run].config,
        overrides=pretrain_override_args,
        digest=training_config_digest,  # not on the command line: a changed training config reruns the job
        out=lambda w, output: Path(output.final).parent,
        shards=lambda w, input: ",".join(str(Path(m).parent) for m in input.manifest),
        launch=lambda w: plan.launch_args(CFG),
    threads: pretrain_threads
    resources:
        mem_mb=8000,
        runtime=1440,
    localrule: True
    shell:
        "python -m esvit pretrain --config {params.config:q} --shards {params.shards:q}"
        " --out {params.out:q} {params.launch:q} {params.overrides:q} > {log:q} 2>&1"


# A released checkpoint (runs.<name>.release, or .checkpoint with checkpoint_format official / timm) in this
# project's format: teacher weights (official) or the backbone (timm), heads dropped, keys renamed for timm's Swin.
rule import_checkpoint:
    input:
        official=import_source,
    output:
        final=ensure("results/imported/{run}/final.pth", non_empty=True),
        record="results/imported/{run}/final.import.json",  # what the report reads (tasks V / V+R)
    log:
        "results/logs/import/{run}.log",
    params:
        arch=lambda w: CFG.runs[w.run].arch,
        format=lambda w: CFG.runs[w.run].checkpoint_format,
    localrule: True
    shell:
        "python -m esvit import --official {input.official:q} --format {params.format} --arch {params.arch:q}"
        " --out {output.final:q} > {log:q} 2>&1"
