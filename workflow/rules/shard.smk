# Any registered data source -> WebDataset shards + manifest.json (the contract in docs/design.md).
# Only the manifest is declared: it is written last, so its presence means the set is complete, and
# Snakemake never deletes finished shards of an interrupted run (a rerun continues from them).


rule write_shards:
    input:
        dataset_download,
    output:
        manifest=ensure(f"{DATA_DIR}/shards/{{dataset}}/{{split}}/manifest.json", non_empty=True),
    log:
        "results/logs/shard/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/shard/{dataset}/{split}.tsv"
    params:
        source=dataset_param("source"),
        root=lambda w: dataset_param("root")(w) or "",
        options=dataset_param("options"),
        settings=plan.shard_settings_json(CFG),
        # a function, as before it was one: a plain value would be a new param to the params rerun trigger, which
        # would rerun every finished shard set once
        data_dir=lambda w, output: DATA_DIR,
        out=lambda w, output: Path(output.manifest).parent,
    threads: CFG.shard.workers
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m esvit shard --dataset {wildcards.dataset:q} --split {wildcards.split:q}"
        " --source {params.source:q} --root={params.root:q} --options {params.options:q}"
        " --shard-settings {params.settings:q} --data-dir {params.data_dir:q} --workers {threads}"
        " --out {params.out:q} > {log:q} 2>&1"
