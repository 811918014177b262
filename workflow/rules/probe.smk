# k-NN and the linear probe, one job each per (model, dataset), reading the cached features. Rerunning one
# dataset touches nothing else: snakemake results/probe/<model>/<dataset>/metrics.json -f


rule classify_knn:
    input:
        unpack(eval_features),
    output:
        metrics=ensure("results/knn/{run}/{dataset}/metrics.json", non_empty=True),
    log:
        "results/logs/knn/{run}/{dataset}.log",
    params:
        ks=",".join(map(str, CFG.eval.knn_ks)),
        temperature=CFG.eval.knn_temperature,
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m esvit knn --train {input.train:q} --test {input.test:q} --out {output.metrics:q}"
        " --run {wildcards.run:q} --dataset {wildcards.dataset:q} --ks {params.ks}"
        " --temperature {params.temperature} > {log:q} 2>&1"


rule fit_linear_probe:
    input:
        unpack(eval_features),
    output:
        metrics=ensure("results/probe/{run}/{dataset}/metrics.json", non_empty=True),
    log:
        "results/logs/probe/{run}/{dataset}.log",
    benchmark:
        "results/benchmarks/probe/{run}/{dataset}.tsv"
    params:
        metric=lambda w: CFG.datasets[w.dataset].metric,
        val=lambda w, input: ["--val", input.val] if "val" in input.keys() else [],
        device=CFG.eval.device,
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m esvit probe --train {input.train:q} --test {input.test:q} --out {output.metrics:q}"
        " --run {wildcards.run:q} --dataset {wildcards.dataset:q} --metric {params.metric:q} {params.val:q}"
        " --device {params.device:q} > {log:q} 2>&1"


rule train_linear_protocol:
    input:
        unpack(eval_features),
        manifest=lambda w: plan.shard_manifest(CFG, w.dataset, "train"),
    output:
        metrics=ensure("results/linear/{run}/{dataset}/metrics.json", non_empty=True),
    log:
        "results/logs/linear/{run}/{dataset}.log",
    benchmark:
        "results/benchmarks/linear/{run}/{dataset}.tsv"
    params:
        mode=CFG.eval.linear_mode,
        epochs=CFG.eval.linear_epochs,
        lr=CFG.eval.linear_lr,
        batch_size=CFG.eval.linear_batch_size,
        workers=CFG.eval.workers,
        device=CFG.eval.device,
        shards=lambda w, input: Path(input.manifest).parent,
    threads: 2
    resources:
        mem_mb=16000,
        runtime=600,
        gpu=lambda w: int(CFG.eval.linear_mode == "paper"),
    shell:
        "python -m esvit linear --train {input.train:q} --test {input.test:q} --out {output.metrics:q}"
        " --run {wildcards.run:q} --dataset {wildcards.dataset:q} --mode {params.mode} --epochs {params.epochs}"
        " --lr {params.lr} --batch-size {params.batch_size} --workers {params.workers}"
        " --shards {params.shards:q} --device {params.device:q} --no-progress > {log:q} 2>&1"
