# Any registered data source -> WebDataset shards + manifest.json (the contract in DESIGN.md).
# Only the manifest is declared: it is written last, so its presence means the set is complete, and
# Snakemake never deletes finished shards of an interrupted run (a rerun continues from them).


rule write_shards:
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
        settings=json.dumps(config.get("shard", {})),
        data_dir=lambda w, output: Path(output.manifest).parents[3],
    threads: lookup(dpath="shard/workers", within=config, default=2)
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m esvit shard --dataset {wildcards.dataset} --split {wildcards.split}"
        " --source {params.source} --root '{params.root}' --options '{params.options}'"
        " --shard-settings '{params.settings}' --data-dir {params.data_dir} --workers {threads}"
        " --out $(dirname {output.manifest}) > {log} 2>&1"
